"""The real PyMoDAQ G3 code as a test peer, with the shims of spec pymodaq.md §10.3.

Imports ``pymodaq_utils`` / ``pymodaq_data`` / ``serializall`` (extra ``interop``, pinned) with
``HOME`` pointing at a temporary directory (they write ``~/.pymodaq`` on import, §10.1 step 3).
The peers are blocking socket code, as the real ones are; tests run them in a worker thread with
a timeout on every socket operation (shim 7). Written for this test suite, not taken from
PyMoDAQ.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import zlib
from typing import Any

import numpy as np

from tests.pymodaq import real_settings_xml as real

_home = os.environ.get("HOME")
os.environ["HOME"] = tempfile.mkdtemp(prefix="labbridge-pymodaq-home-")
try:
    from pymodaq_data.data import Axis, DataRaw, DataToExport
    from pymodaq_utils.serialize.mysocket import Socket as _PmdSocket
    from pymodaq_utils.serialize.serializer_legacy import DeSerializer
    from serializall import SerializableFactory
finally:
    if _home is not None:
        os.environ["HOME"] = _home

FACTORY = SerializableFactory()
TIMEOUT = 10.0


# Shim 3: stand-in classes, registered under their exact real names.
@SerializableFactory.register_decorator()
class DataActuator(DataRaw):
    pass


@SerializableFactory.register_decorator()
class DataFromPlugins(DataRaw):
    def __init__(self, *args: Any, do_plot: bool = True, do_save: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, do_plot=do_plot, do_save=do_save, **kwargs)


class EofSafeSocket(_PmdSocket):
    """Shim 1: an empty recv raises instead of spinning forever at 100 % CPU (§9 #1)."""

    def check_received_length(self, length: int) -> bytes:
        chunks, got = [], 0
        while got < length:
            part = self.socket.recv(min(65536, length - got))
            if not part:
                raise ConnectionError("peer closed")
            chunks.append(part)
            got += len(part)
        return b"".join(chunks)


def connect(port: int, nodelay: bool = False, source: str | None = None) -> EofSafeSocket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                 source_address=None if source is None else (source, 0))
    s.settimeout(TIMEOUT)
    if nodelay:  # shim 8, only when latency is measured; the real peer leaves Nagle on
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return EofSafeSocket(s)


def crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def frame_480x640(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (480, 640), dtype=np.uint16)


def dte_of(frame: np.ndarray, name: str = "viewer") -> DataToExport:
    dfp = DataFromPlugins("cam", data=[frame])
    return DataToExport(name, data=[dfp])


def actuator(value: float, units: str = "mm") -> DataActuator:
    return DataActuator("actuator", data=[np.array([float(value)])], units=units)




def grabber_client(port: int, frame: np.ndarray, log: list[Any],
                   source: str | None = None) -> None:
    """The real G3 detector client's exchange (§6): type, Infos, then serve commands."""
    sock = connect(port, source=source)
    try:
        sock.check_sended_with_serializer("GRABBER")
        sock.check_sended_with_serializer("Infos")
        sock.check_sended_with_serializer(real.INFOS_GRABBER)
        while True:
            try:
                cmd = DeSerializer(sock).string_deserialization()
            except (ConnectionError, OSError):
                return
            log.append(cmd)
            if cmd.startswith("Send Data"):
                sock.check_sended_with_serializer("Done")
                sock.check_sended_with_serializer(dte_of(frame))
            elif cmd == "set_info":
                path = DeSerializer(sock).list_deserialization()
                xml = DeSerializer(sock).type_and_object_deserialization()  # shim 6
                log.append(("set_info", path, xml))
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def actuator_client(port: int, log: list[Any], source: str | None = None) -> None:
    """The real G3 actuator client's exchange (§6)."""
    sock = connect(port, source=source)
    position = 0.0
    try:
        sock.check_sended_with_serializer("ACTUATOR")
        sock.check_sended_with_serializer("Infos")
        sock.check_sended_with_serializer(real.INFOS_ACTUATOR)
        # then two of its settings change (TCPClient.queue_command 'send_info')
        for path, xml in ((real.INFO_XML_EPSILON_PATH, real.INFO_XML_EPSILON),
                          (real.INFO_XML_IS_BOUNDS_PATH, real.INFO_XML_IS_BOUNDS)):
            sock.check_sended_with_serializer("Info_xml")
            sock.check_sended_with_serializer(path)
            sock.check_sended_with_serializer(xml)
        while True:
            try:
                cmd = DeSerializer(sock).string_deserialization()
            except (ConnectionError, OSError):
                return
            log.append(cmd)
            if cmd in ("move_abs", "move_rel"):
                target = DeSerializer(sock).dwa_deserialization()
                log.append((type(target).__name__, float(target.data[0][0]), target.units))
                position = float(target.data[0][0]) + (position if cmd == "move_rel" else 0)
                sock.check_sended_with_serializer("move_done")
                sock.check_sended_with_serializer(actuator(position))
            elif cmd == "move_home":
                position = 0.0
                sock.check_sended_with_serializer("move_done")
                sock.check_sended_with_serializer(actuator(position))
            elif cmd in ("get_actuator_value", "check_position"):
                sock.check_sended_with_serializer("position_is")
                sock.check_sended_with_serializer(actuator(position))
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def listen() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(TIMEOUT)
    return srv


def accept(srv: socket.socket) -> EofSafeSocket:
    conn, _ = srv.accept()
    conn.settimeout(TIMEOUT)
    return EofSafeSocket(conn)  # shim 2: rewrap what accept() gives


def _next_command(sock: EofSafeSocket, out: dict[str, Any]) -> str:
    """The next command string; ``Info_xml`` messages on the way are recorded in
    ``out['info_xml']`` (the real server's ``listen_client`` reads them at any time)."""
    while True:
        cmd = DeSerializer(sock).string_deserialization()
        if cmd != "Info_xml":
            return cmd
        path = DeSerializer(sock).list_deserialization()
        xml = DeSerializer(sock).type_and_object_deserialization()  # shim 6
        out.setdefault("info_xml", []).append((path, xml))


def server_session(srv: socket.socket, scenario: str) -> dict[str, Any]:
    """A server built from PyMoDAQ's socket and serializer classes (§10.4)."""
    out: dict[str, Any] = {}
    sock = accept(srv)
    try:
        out["type"] = DeSerializer(sock).string_deserialization()
        assert DeSerializer(sock).string_deserialization() == "Infos"
        out["infos"] = DeSerializer(sock).type_and_object_deserialization()
        if scenario == "actuator":
            sock.check_sended_with_serializer("move_abs")
            sock.check_sended_with_serializer(actuator(12.5))
            out["reply1"] = _next_command(sock, out)
            da = DeSerializer(sock).dwa_deserialization()
            out["moved"] = (type(da).__name__, float(da.data[0][0]), da.units)
            sock.check_sended_with_serializer("get_actuator_value")
            out["reply2"] = _next_command(sock, out)
            da = DeSerializer(sock).dwa_deserialization()
            out["position"] = (type(da).__name__, float(da.data[0][0]), da.units)
            sock.check_sended_with_serializer("set_info")
            sock.check_sended_with_serializer(real.SET_INFO_HOME_PATH)
            sock.check_sended_with_serializer(real.SET_INFO_HOME)
        elif scenario == "grabber":
            sock.check_sended_with_serializer("set_info")
            sock.check_sended_with_serializer(real.SET_INFO_EXPOSURE_PATH)
            sock.check_sended_with_serializer(real.SET_INFO_EXPOSURE)
            sock.check_sended_with_serializer("Send Data 2D")
            out["reply1"] = _next_command(sock, out)
            dte = DeSerializer(sock).dte_deserialization()
            arr = dte[0].data[0]
            out["dte"] = (type(dte).__name__, type(dte[0]).__name__, arr.shape, str(arr.dtype),
                          crc(arr))
        elif scenario == "moving":
            # A real main computer polls the position while the axis moves (its DAQ_Move
            # refresh timer), then stops the move.
            sock.check_sended_with_serializer("move_abs")
            sock.check_sended_with_serializer(actuator(1000.0))
            seen: list[tuple[str, float]] = []
            sock.check_sended_with_serializer("get_actuator_value")
            while True:  # the answer (maybe after values the client sent unasked)
                cmd = _next_command(sock, out)
                da = DeSerializer(sock).dwa_deserialization()
                seen.append((cmd, float(da.data[0][0])))
                if cmd == "move_done" or len(seen) >= 3:
                    break
            sock.check_sended_with_serializer("stop_motion")
            while seen[-1][0] != "move_done":
                cmd = _next_command(sock, out)
                da = DeSerializer(sock).dwa_deserialization()
                seen.append((cmd, float(da.data[0][0])))
            out["seen"] = seen
            return out
        # the client sends Quit when it stops
        out["last"] = _next_command(sock, out)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    return out


__all__ = ["FACTORY", "Axis", "DataActuator", "DataFromPlugins", "DataRaw", "DataToExport",
           "DeSerializer", "EofSafeSocket"]
