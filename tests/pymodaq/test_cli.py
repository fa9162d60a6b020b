"""``labbridge grab`` and ``labbridge serve`` with the PyMoDAQ example files, as subprocesses;
the PNG writer checked by a decoder written here from the PNG specification (and by Pillow when
it is installed)."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from labbridge.cli.pymodaq import png_bytes
from labbridge.devices.camera import SimCameraBackend
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient
from labbridge.protocol.pymodaq.messages import Generation
from tests.cli_helpers import labbridge_cmd, port_of, serving
from tests.conftest import REPO
from tests.pymodaq.conftest import fast_backoff


def decode_png(data: bytes) -> np.ndarray:
    """Grayscale PNG decoder (colour type 0, 8/16 bit, all five row filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    assert ihdr is not None
    w, h, depth, colour, _c, _f, interlace = ihdr
    assert colour == 0 and interlace == 0 and depth in (8, 16)
    bpp = depth // 8
    raw = zlib.decompress(idat)
    stride = w * bpp
    out = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(ftype)
            if pred is None:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + pred) & 0xFF
        out[y], prev = cur, cur
    img = out.astype(np.uint8)
    return img if depth == 8 else img.view(">u2").reshape(h, w).astype(np.uint16)


@pytest.mark.parametrize("a", [
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000,
    np.array([[True, False], [False, True]]),
    np.arange(5, dtype=np.uint16),
])
def test_png_roundtrip(a):
    img = decode_png(png_bytes(a))
    want = a.reshape(1, -1) if a.ndim == 1 else a
    if a.dtype == np.bool_:
        want = want.astype(np.uint8) * 255
    np.testing.assert_array_equal(img, want)


def test_png_scales_floats_to_16_bit():
    img = decode_png(png_bytes(np.array([[0.0, 0.5], [1.0, 0.25]])))
    np.testing.assert_array_equal(img, [[0, 32768], [65535, 16384]])


def test_png_opens_with_pillow_when_installed(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    p = tmp_path / "a.png"
    p.write_bytes(png_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    with image_mod.open(p) as im:
        assert im.size == (8, 8)


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():  # readiness of a subprocess: its file (no other channel)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no ready file"
        time.sleep(0.02)
    return json.loads(path.read_text())


def test_grab_a_frame_from_the_example_camera_node(tmp_path):
    out, ready = tmp_path / "frame.png", tmp_path / "grab.json"
    grab = subprocess.Popen(labbridge_cmd("grab", "127.0.0.1:0", "--out", str(out),
                                          "--ready-file", str(ready), "--timeout", "30"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = _wait_file(ready, grab)["port"]
        text = (REPO / "examples/pymodaq-camera.yaml").read_text()
        cam_yaml = tmp_path / "cam.yaml"
        cam_yaml.write_text(text.replace("127.0.0.1:6341", f"127.0.0.1:{port}"))
        with serving(cam_yaml, tmp_path):
            stdout, stderr = grab.communicate(timeout=40)
    finally:
        if grab.poll() is None:
            grab.kill()
            grab.communicate()
    assert grab.returncode == 0, stderr
    img = decode_png(out.read_bytes())
    # the example camera is deterministic (seed 0): its first frame, computed here
    want = asyncio.run(SimCameraBackend(640, 480, noise=10, seed=0).snap())
    np.testing.assert_array_equal(img, want)
    assert f"crc32={zlib.crc32(want.tobytes()):08x}" in stdout
    assert "480x640 uint16" in stdout


def test_grab_times_out_cleanly_without_a_camera(tmp_path):
    res = subprocess.run(labbridge_cmd("grab", "127.0.0.1:0", "--out", str(tmp_path / "x.png"),
                                       "--timeout", "0.2"),
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "no GRABBER data" in res.stderr
    assert not (tmp_path / "x.png").exists()


async def test_serve_the_example_server_node(tmp_path):
    with serving(REPO / "examples/pymodaq-server.yaml", tmp_path) as (proc, info):
        port = port_of(info, "tcp", "pymodaq-server")
        c = PyMoDAQClient(Stage("s", SimStageBackend()), "127.0.0.1", port,
                          generation=Generation.G3, backoff=fast_backoff())
        await c.start()
        try:
            await c.wait_connected(10)
        finally:
            await c.stop()
        assert proc.poll() is None
