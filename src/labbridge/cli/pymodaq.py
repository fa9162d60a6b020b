"""``labbridge grab HOST:PORT --out frame.png``: take one frame from a PyMoDAQ GRABBER client.

In PyMoDAQ's topology the detector computer is the *client* (spec pymodaq.md §2), so this
command plays the main computer: it listens on HOST:PORT as a TCPServer, waits for a GRABBER
(a ``labbridge serve examples/pymodaq-camera.yaml`` node reconnects to it within its backoff),
sends ``Send Data <dim>``, and writes the first channel of the ``Done`` reply as a grayscale PNG
(8-bit for uint8/bool data, 16-bit otherwise; float data is scaled to the full 16-bit range).

The PNG writer is a minimal, dependency-free encoder (zlib + struct, filter 0 on every row),
see ADR 0057.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import click
import numpy as np

from labbridge.cli.common import run_async
from labbridge.devices.state_file import write_json_atomic

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def to_gray(a: np.ndarray) -> np.ndarray:
    """A 2-D uint8 or big-endian uint16 image from any numeric array (1-D -> one row)."""
    a = np.asarray(a)
    if a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim == 1:
        a = a.reshape(1, -1)
    elif a.ndim > 2:
        a = a.reshape(-1, a.shape[-1])
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "u" and a.dtype.itemsize <= 2:
        return a.astype(">u2")
    f = np.real(a).astype(np.float64)
    lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint(np.nan_to_num((f - lo) * scale)).astype(">u2")


def png_bytes(a: np.ndarray) -> bytes:
    """A valid grayscale PNG (colour type 0) of ``a``."""
    img = to_gray(a)
    h, w = img.shape
    depth = 8 if img.dtype == np.uint8 else 16
    rowbytes = w * (depth // 8)
    raw = np.zeros((h, rowbytes + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    raw[:, 1:] = np.ascontiguousarray(img).view(np.uint8).reshape(h, rowbytes)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (_PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def _hostport(text: str) -> tuple[str, int]:
    """HOST:PORT where PORT may be 0 (any free port, see --ready-file)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def grab_once(host: str, port: int, *, dim: str, timeout: float,
                    ready_file: str | None = None) -> list[np.ndarray]:
    from labbridge.links.pymodaq import PyMoDAQServer

    server = PyMoDAQServer(host, port, name="grab")
    await server.start()
    try:
        if ready_file:
            write_json_atomic(Path(ready_file), {"host": host, "port": server.port})
        click.echo(f"listening on {host}:{server.port}, waiting for a GRABBER client...",
                   err=True)
        await server.detector.wait_connected(timeout)
        return await server.detector.grab(dim)
    finally:
        await server.stop()


@click.command()
@click.argument("address", metavar="HOST:PORT")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")
@click.option("--dim", type=click.Choice(["0D", "1D", "2D", "ND"]), default="2D",
              show_default=True, help="Which 'Send Data' command to send.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a GRABBER client and for its data.")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Write {host, port} JSON here once listening (port 0 = any free port).")
def grab(address: str, out: str, dim: str, timeout: float, ready_file: str | None) -> None:
    """Listen on HOST:PORT as a PyMoDAQ TCPServer, grab one frame, save it as PNG."""
    host, port = _hostport(address)
    try:
        arrays = run_async(grab_once(host, port, dim=dim, timeout=timeout,
                                     ready_file=ready_file))
    except TimeoutError:
        raise click.ClickException(f"no GRABBER data within {timeout:g} s") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    if not arrays:
        raise click.ClickException("the detector sent no data")
    frame = np.asarray(arrays[0])
    Path(out).write_bytes(png_bytes(frame))
    checksum = zlib.crc32(np.ascontiguousarray(frame).tobytes()) & 0xFFFFFFFF
    click.echo(f"{out}: {'x'.join(map(str, frame.shape))} {frame.dtype} crc32={checksum:08x}")


def register(group: click.Group) -> None:
    group.add_command(grab)
