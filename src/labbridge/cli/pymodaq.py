"""``labbridge grab HOST:PORT --out frame.png``: take one frame from a PyMoDAQ GRABBER client.

In PyMoDAQ's topology the detector computer is the *client* (spec pymodaq.md §2), so this
command plays the main computer: it listens on HOST:PORT as a TCPServer, waits for a GRABBER
(a ``labbridge serve examples/pymodaq-camera.yaml`` node reconnects to it within its backoff),
sends ``Send Data <dim>``, and saves the first channel of the ``Done`` reply:

* ``frame.png``: an 8-bit grayscale image stretched for viewing (percentiles 0.5..99.5 by
  default, ``--stretch minmax`` for min..max): raw counts of a camera fill a few hundred of
  65536 levels and would look black as they are; ``--png16`` writes the raw values as a 16-bit
  PNG instead (lossless for unsigned data of at most 16 bits; other data is scaled, and the
  command says so);
* ``frame.npy`` beside it: the raw array, exact (dtype and shape), unless ``--no-npy``;
* 0-D data (``--dim 0D``) is printed, and saved only as ``.npy``: it is no image.

The PNG encoder is :mod:`labbridge.protocol.png` (ADR 0057).

Access: this machine may always connect; ``--allow NETWORK`` (repeatable) lets a distant
camera computer in too (the operator role, docs/security.md). A refused connection is printed.
"""

from __future__ import annotations

import ipaddress
import zlib
from pathlib import Path

import click
import numpy as np

from labbridge.access import LOOPBACK, AuditEvent, Gate, Network, Policy, Role
from labbridge.cli.common import run_async
from labbridge.devices.state_file import write_json_atomic
from labbridge.protocol.png import encode_gray, is_lossless_16bit, stretch_to_8bit, to_16bit

#: Percentiles of the default view stretch (robust to a few hot or dead pixels).
VIEW_PERCENTILES = (0.5, 99.5)


def _hostport(text: str) -> tuple[str, int]:
    """HOST:PORT where PORT may be 0 (any free port, see --ready-file)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _networks(texts: tuple[str, ...]) -> tuple[Network, ...]:
    nets = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not an IP address or network (CIDR)",
                                     param_hint="--allow") from None
    return tuple(nets)


def _gate(allow: tuple[Network, ...]) -> Gate:
    """This machine, and the ``--allow`` networks as operators (who may register a GRABBER);
    every refusal is printed, so a camera computer left out is not a silent wait."""
    gate = Gate(Policy(addresses={Role.ADMIN: LOOPBACK, Role.OPERATOR: allow},
                       udp_writers=LOOPBACK, configured=True), node="grab")

    def show(event: AuditEvent) -> None:
        if event.outcome == "refused":
            click.echo(f"refused a connection from {event.who}: {event.reason} "
                       "(--allow ADDRESS lets it in)", err=True)

    gate.add_sink(show)
    return gate


async def grab_once(host: str, port: int, *, dim: str, timeout: float,
                    ready_file: str | None = None,
                    allow: tuple[Network, ...] = ()) -> list[np.ndarray]:
    from labbridge.links.pymodaq import PyMoDAQServer

    server = PyMoDAQServer(host, port, name="grab", gate=_gate(allow))
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
              help="PNG file to write (the raw data goes to the same name with .npy).")
@click.option("--dim", type=click.Choice(["0D", "1D", "2D", "ND"]), default="2D",
              show_default=True, help="Which 'Send Data' command to send.")
@click.option("--stretch", type=click.Choice(["percentile", "minmax"]), default="percentile",
              show_default=True,
              help="View scaling of the 8-bit PNG: 0.5..99.5 percentiles, or min..max.")
@click.option("--png16", is_flag=True,
              help="Write the raw values as a 16-bit PNG instead of the 8-bit view.")
@click.option("--no-npy", is_flag=True, help="Do not write the raw data as .npy beside it.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a GRABBER client and for its data.")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Write {host, port} JSON here once listening (port 0 = any free port).")
@click.option("--allow", "allow", multiple=True, metavar="NETWORK",
              help="An address or network (CIDR) whose GRABBER may connect, besides this "
                   "machine (repeatable).")
def grab(address: str, out: str, dim: str, stretch: str, png16: bool, no_npy: bool,
         timeout: float, ready_file: str | None, allow: tuple[str, ...]) -> None:
    """Listen on HOST:PORT as a PyMoDAQ TCPServer, grab one frame, save it as PNG (+ .npy)."""
    host, port = _hostport(address)
    networks = _networks(allow)
    try:
        arrays = run_async(grab_once(host, port, dim=dim, timeout=timeout,
                                     ready_file=ready_file, allow=networks))
    except TimeoutError:
        raise click.ClickException(f"no GRABBER data within {timeout:g} s") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    if not arrays:
        raise click.ClickException("the detector sent no data")
    data = np.asarray(arrays[0])
    checksum = zlib.crc32(np.ascontiguousarray(data).tobytes()) & 0xFFFFFFFF
    png_path, npy_path = Path(out), Path(out).with_suffix(".npy")
    shape = "x".join(map(str, data.shape)) or "scalar"
    notes: list[str] = []
    written: list[Path] = []
    try:
        if data.size == 1:  # 0-D data (PyMoDAQ's Data0D travels as a one-element array)
            notes.append(f"0-D value={data.reshape(-1)[0].item()!r} (no image)")
        elif png16:
            png_path.write_bytes(encode_gray(to_16bit(data)))
            written.append(png_path)
            notes.append("16-bit raw values" if is_lossless_16bit(data)
                         else f"16-bit, {data.dtype} scaled min..max (not the raw values)")
        else:
            low, high = VIEW_PERCENTILES if stretch == "percentile" else (0.0, 100.0)
            view, lo, hi = stretch_to_8bit(data, low=low, high=high)
            png_path.write_bytes(encode_gray(view))
            written.append(png_path)
            notes.append(f"8-bit view of {lo:.6g}..{hi:.6g}")
        if not no_npy:
            np.save(npy_path, data)
            written.append(npy_path)
            notes.append(f"raw data in {npy_path}")
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror or exc}"
                                   ) from None
    where = str(written[0]) if written else "(nothing written)"
    click.echo(f"{where}: {shape} {data.dtype} crc32={checksum:08x}; " + "; ".join(notes))


def register(group: click.Group) -> None:
    group.add_command(grab)
