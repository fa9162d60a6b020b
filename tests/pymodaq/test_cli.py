"""``labbridge grab`` and ``labbridge serve`` with the PyMoDAQ example files, as subprocesses;
the PNG encoder (labbridge.protocol.png) checked by a decoder written here from the PNG
specification (and by Pillow when it is installed)."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from labbridge.devices.camera import SimCameraBackend
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient
from labbridge.protocol.png import encode_gray, stretch_to_8bit, to_16bit
from labbridge.protocol.pymodaq.messages import Generation
from tests.cli_helpers import labbridge_cmd, port_of, run_cli, serving
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
    np.arange(12, dtype=">u2").reshape(3, 4) * 5000,
    np.arange(5, dtype=np.uint16).reshape(1, 5),
])
def test_png_roundtrip(a):
    np.testing.assert_array_equal(decode_png(encode_gray(a)), a)


def test_16_bit_samples_raw_for_unsigned_scaled_otherwise():
    raw = np.array([[100, 1000], [101, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_png(encode_gray(to_16bit(raw))), raw)
    img = decode_png(encode_gray(to_16bit(np.array([[0.0, 0.5], [1.0, 0.25]]))))
    np.testing.assert_array_equal(img, [[0, 32768], [65535, 16384]])
    bools = to_16bit(np.array([[True, False]]))
    np.testing.assert_array_equal(bools, [[65535, 0]])


def test_stretch_maps_the_data_range_onto_8_bits():
    """Issue 15 item 8: raw counts (100..1100 of 65535) must not come out almost black."""
    counts = np.linspace(100, 1100, 101, dtype=np.float64).astype(np.uint16).reshape(1, -1)
    view, lo, hi = stretch_to_8bit(counts)
    assert (lo, hi) == (100.0, 1100.0) and view.min() == 0 and view.max() == 255
    hot = np.linspace(100, 1100, 1000).astype(np.uint16).reshape(10, 100)
    hot[5, 50] = 65535  # one hot pixel in 1000: the percentile stretch ignores it
    view, lo, hi = stretch_to_8bit(hot, low=0.5, high=99.5)
    assert hi < 1100.0 and (view == 255).sum() > 1
    flat, lo, hi = stretch_to_8bit(np.full((2, 2), 7.0))
    assert (flat == 0).all() and lo == hi == 7.0
    nan, _, _ = stretch_to_8bit(np.array([[np.nan, 1.0], [2.0, 3.0]]))
    assert nan[0, 0] == 0 and nan[1, 1] == 255


def test_encoder_refuses_what_png_cannot_hold():
    for bad in (np.zeros(5, np.uint8), np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.int32)):
        with pytest.raises(ValueError):
            encode_gray(bad)


def test_png_opens_with_pillow_when_installed(tmp_path):
    import PIL.Image as image_mod
    p = tmp_path / "a.png"
    p.write_bytes(encode_gray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    with image_mod.open(p) as im:
        assert im.size == (8, 8)


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():  # readiness of a subprocess: its file (no other channel)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no ready file"
        time.sleep(0.02)
    return json.loads(path.read_text())


def _grab_from_example_camera(tmp_path: Path, *extra: str) -> tuple[str, Path]:
    out, ready = tmp_path / "frame.png", tmp_path / "grab.json"
    grab = subprocess.Popen(labbridge_cmd("grab", "127.0.0.1:0", "--out", str(out),
                                          "--ready-file", str(ready), "--timeout", "30",
                                          *extra),
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
    return stdout, out


#: The example camera is deterministic (seed 0): its first frame, computed here.
def _first_frame() -> np.ndarray:
    return asyncio.run(SimCameraBackend(640, 480, noise=10, seed=0).snap())


def test_grab_a_frame_from_the_example_camera_node(tmp_path):
    """Issue 15 item 8: an 8-bit PNG stretched for viewing, and the raw counts in a .npy."""
    stdout, out = _grab_from_example_camera(tmp_path)
    want = _first_frame()
    raw = np.load(out.with_suffix(".npy"))
    assert raw.dtype == np.uint16 and np.array_equal(raw, want)  # lossless
    view = decode_png(out.read_bytes())
    lo, hi = np.percentile(want, [0.5, 99.5])
    expect = np.clip(np.rint((want.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(view, expect.astype(np.uint8))
    assert view.max() == 255 and np.median(view) > 5  # not almost black
    assert f"crc32={zlib.crc32(want.tobytes()):08x}" in stdout
    assert "frame.png: 480x640 uint16" in stdout and "frame.npy" in stdout


def test_grab_png16_writes_the_raw_counts(tmp_path):
    stdout, out = _grab_from_example_camera(tmp_path, "--png16", "--no-npy")
    np.testing.assert_array_equal(decode_png(out.read_bytes()), _first_frame())
    assert "16-bit raw values" in stdout and not out.with_suffix(".npy").exists()


def test_grab_dim_0d_returns_0d_data(tmp_path):
    """Issue 15 item 8: --dim 0D gives one value per channel (the frame's mean), not a frame."""
    stdout, out = _grab_from_example_camera(tmp_path, "--dim", "0D")
    value = np.load(out.with_suffix(".npy"))
    assert value.shape == (1,) and value[0] == pytest.approx(float(np.mean(_first_frame())))
    assert not out.exists() and "0-D value=" in stdout


def test_grab_help_lists_the_options_docs_pymodaq_md_names():
    """docs/pymodaq.md says `labbridge grab --help` lists these (tests/docs runs only the
    commands in its bash blocks)."""
    res = run_cli("grab", "--help")
    assert res.returncode == 0
    for opt in ("--dim", "--stretch", "--png16", "--no-npy", "--timeout", "--ready-file",
                "--allow"):
        assert opt in res.stdout


@pytest.mark.parametrize("bench", ["bench/frames.py", "bench/pymodaq_tls.py"])
def test_the_benches_docs_pymodaq_md_names_start(bench):
    """The page names them in prose (a full run takes minutes on a shared machine): each one
    parses its options and explains itself."""
    res = subprocess.run([sys.executable, bench, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage:")


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
