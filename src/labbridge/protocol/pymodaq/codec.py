"""Connection codecs: G3 message grouping, and first-frame generation detection (spec §6, §7.1).

:class:`G3Codec` turns the G3 object stream into the typed messages of
:mod:`~labbridge.protocol.pymodaq.messages` (a command ``str`` followed by as many payload
objects as that command takes) and encodes typed messages as G3 objects, so links code is the same
for G1 and G3. :func:`detect_generation` looks at the first bytes a client sends.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from labbridge.protocol.base import NEED_DATA, ProtocolError, Side
from labbridge.protocol.pymodaq._wire import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_STRING,
    U32,
    ReceiveBudget,
)
from labbridge.protocol.pymodaq.g1 import G1Codec
from labbridge.protocol.pymodaq.g3 import Chunk, G3Framer, G3Object, encode_chunks
from labbridge.protocol.pymodaq.messages import (
    POSITION_QUERIES,
    SEND_DATA,
    AxisInfo,
    ClientType,
    Dialect,
    Done,
    Generation,
    GetPosition,
    Hello,
    Info,
    Infos,
    InfoXml,
    MoveAbs,
    MoveDone,
    MoveHome,
    MoveRel,
    PositionIs,
    Quit,
    Role,
    SendData,
    SetInfo,
    StopMotion,
    Unknown,
    command_name,
)
from labbridge.protocol.pymodaq.objects import (
    DataToExport,
    DataWithAxes,
    data_actuator,
    data_from_plugins,
    data_to_export,
)

#: Payload objects each command takes, per direction (§6 table).
_CLIENT_TO_SERVER: Final = {"Infos": 1, "Info_xml": 2, "Info": 2, "Done": 1, "position_is": 1,
                            "move_done": 1, "Quit": 0}
_SERVER_TO_CLIENT: Final = {"move_abs": 1, "move_rel": 1, "move_home": 0, "stop_motion": 0,
                            "set_info": 2, "Infos": 1, "Info_xml": 2, "Info": 2, "Quit": 0,
                            **dict.fromkeys(POSITION_QUERIES, 0), **dict.fromkeys(SEND_DATA, 0)}


def _xml_text(value: Any, what: str) -> str:
    """Settings XML arrives as ``bytes`` from real peers, maybe ``str`` (§5.4)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8", kind="bad_string", fatal=True) from None
    if isinstance(value, str):
        return value
    raise ProtocolError(f"{what}: expected bytes or str, got {type(value).__name__}",
                        kind="bad_object", fatal=True)


def _path(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ProtocolError("parameter path is not a list of strings", kind="bad_object",
                            fatal=True)
    return tuple(value)


def _position(value: Any, cmd: str) -> tuple[float, str, DataWithAxes | None]:
    if isinstance(value, DataWithAxes):
        try:
            return value.value, value.units, value
        except ValueError as exc:
            raise ProtocolError(f"{cmd}: {exc}", kind="bad_object", fatal=True) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), "", None
    raise ProtocolError(f"{cmd}: expected a DataActuator, got {type(value).__name__}",
                        kind="bad_object", fatal=True)


class G3Codec:
    """Sans-I/O G3 connection codec for one side (``role``) of one connection.

    Same interface as :class:`~labbridge.protocol.pymodaq.g1.G1Codec`: ``receive_data`` /
    ``get_buffer`` + ``buffer_updated``, ``next_event``, ``receive_eof``, ``send`` /
    ``send_chunks``. A command name outside the table is reported as :class:`Unknown` and the
    stream goes on (G3 framing survives it); a payload of the wrong type is fatal.
    """

    generation = Generation.G3

    def __init__(self, role: Role, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_string: int = DEFAULT_MAX_STRING, detector_name: str = "viewer",
                 actuator_name: str = "actuator", budget: ReceiveBudget | None = None) -> None:
        self.role = role
        self.framer = G3Framer(max_message=max_message, max_string=max_string, budget=budget)
        self._table = _CLIENT_TO_SERVER if role is Role.SERVER else _SERVER_TO_CLIENT
        self._hello_pending = role is Role.SERVER
        self._cmd: str | None = None
        self._payload: list[Any] = []
        self._need = 0
        self.detector_name = detector_name
        self.actuator_name = actuator_name

    # -- receiving ----------------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self.framer.receive_data(data)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return self.framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> bool:
        """False when the bytes only went on filling a big item (see the framer's)."""
        return self.framer.buffer_updated(nbytes)

    @property
    def in_message(self) -> bool:
        """True from the first byte of a message (a command and its payload) to its end."""
        return self._cmd is not None or self.framer.in_message

    def close(self) -> None:
        """Release every buffer now (connection gone)."""
        self._payload = []
        self.framer.close()

    def receive_eof(self) -> None:
        self.framer.receive_eof()
        if self._cmd is not None:
            raise ProtocolError(f"peer closed after {self._cmd!r} without its payload",
                                kind="truncated", fatal=True)

    def next_event(self) -> object:
        while True:
            ev = self.framer.next_event()
            if not isinstance(ev, G3Object):
                return NEED_DATA
            out = self._feed(ev.obj)
            if out is not None:
                return out

    def _feed(self, obj: Any) -> object | None:
        if self._hello_pending:
            self._hello_pending = False
            try:
                return Hello(ClientType(obj))
            except ValueError:
                raise ProtocolError(f"{obj!r} is not a valid client type (GRABBER or ACTUATOR)",
                                    kind="bad_client_type", fatal=True) from None
        if self._cmd is None:
            if not isinstance(obj, str):
                return Unknown("<payload without command>", obj)
            need = self._table.get(obj)
            if need is None:
                return Unknown(obj)
            if need == 0:
                return self._build(obj, [])
            self._cmd, self._need, self._payload = obj, need, []
            return None
        self._payload.append(obj)
        if len(self._payload) < self._need:
            return None
        cmd, payload = self._cmd, self._payload
        self._cmd, self._payload = None, []
        return self._build(cmd, payload)

    def _build(self, cmd: str, p: list[Any]) -> object:
        if cmd == "Quit":
            return Quit()
        if cmd == "Infos":
            return Infos(_xml_text(p[0], "Infos XML"))
        if cmd == "Info_xml":
            return InfoXml(_path(p[0]), _xml_text(p[1], "Info_xml XML"))
        if cmd == "Info":
            if not isinstance(p[0], str):
                raise ProtocolError("Info name is not a str", kind="bad_object", fatal=True)
            value = p[1]
            if isinstance(value, bool) or not isinstance(value, str | float | int):
                # the real client sends str(value); a bytes or array value could be huge once
                # turned into text: refuse it
                raise ProtocolError(f"Info value is a {type(value).__name__}, not a str",
                                    kind="bad_object", fatal=True)
            return Info(p[0], value if isinstance(value, str) else float(value))
        if cmd == "Done":
            if not isinstance(p[0], DataToExport):
                raise ProtocolError(f"Done: expected a DataToExport, got {type(p[0]).__name__}",
                                    kind="bad_object", fatal=True)
            return Done(p[0].arrays(), p[0])
        if cmd in ("position_is", "move_done", "move_abs", "move_rel"):
            value, units, data = _position(p[0], cmd)
            cls = {"position_is": PositionIs, "move_done": MoveDone, "move_abs": MoveAbs,
                   "move_rel": MoveRel}[cmd]
            return cls(value, units, data)
        if cmd == "move_home":
            return MoveHome()
        if cmd == "stop_motion":
            return StopMotion()
        if cmd in POSITION_QUERIES:
            return GetPosition(cmd)
        if cmd in SEND_DATA:
            return SendData(cmd[-2:])
        if cmd == "set_info":
            return SetInfo(_path(p[0]), _xml_text(p[1], "set_info XML"))
        raise AssertionError(cmd)  # pragma: no cover - the tables and _build agree

    # -- sending ------------------------------------------------------------------------------------
    def objects_for(self, msg: object) -> list[Any]:
        """The G3 objects (one MESSAGE each) that carry ``msg`` (§6)."""
        name = command_name(msg)
        if isinstance(msg, Hello | Quit | MoveHome | StopMotion | GetPosition | SendData):
            return [name]
        if isinstance(msg, MoveAbs | MoveRel | PositionIs | MoveDone):
            da = msg.data if msg.data is not None else data_actuator(
                msg.value, units=msg.units, name=self.actuator_name)
            return [name, da]
        if isinstance(msg, Infos):
            return [name, msg.xml.encode("utf-8")]
        if isinstance(msg, InfoXml | SetInfo):
            return [name, list(msg.path), msg.xml.encode("utf-8")]
        if isinstance(msg, Info):
            return [name, msg.name, str(msg.value)]
        if isinstance(msg, Done):
            dte = msg.dte if msg.dte is not None else data_to_export(
                self.detector_name,
                [data_from_plugins(self.detector_name, [np.asarray(a) for a in msg.arrays])])
            return [name, dte]
        if isinstance(msg, AxisInfo):
            raise ProtocolError("x_axis / y_axis do not exist in G3 (axes travel inside the "
                                "data)", side=Side.OURS, kind="unsupported_type")
        raise ProtocolError(f"no G3 form for {msg!r}", side=Side.OURS)  # pragma: no cover

    def send_chunks(self, msg: object) -> list[Chunk]:
        out: list[Chunk] = []
        for obj in self.objects_for(msg):
            out.extend(encode_chunks(obj))
        return out

    def send(self, msg: object) -> bytes:
        return b"".join(self.send_chunks(msg))


Codec = G1Codec | G3Codec

_G3_HEAD: Final = b"\x00\x00\x00\x03str"
_G1_HEADS: Final = (b"GRABBER", b"ACTUATO")
#: First frames longer than this are refused before their body is read (§7.1).
MAX_FIRST_FRAME: Final = 64


def detect_generation(head: bytes | bytearray | memoryview) -> Generation | None:
    """Generation of a client from its first bytes (§7.1), or None if 11 bytes are not there yet.

    Raises a fatal ``ProtocolError`` (kind ``unknown_peer``) for anything that is neither a G1
    nor a G3 client type.
    """
    if len(head) >= 4:
        (n,) = U32.unpack_from(head, 0)
        if n > MAX_FIRST_FRAME:
            raise ProtocolError(f"first frame of {n} bytes: not a PyMoDAQ client type",
                                kind="unknown_peer", fatal=True)
    if len(head) < 11:
        return None
    peek = bytes(head[4:11])
    if peek == _G3_HEAD:
        if n not in (18, 19):
            raise ProtocolError(f"G3 first frame of {n} bytes is not GRABBER or ACTUATOR",
                                kind="unknown_peer", fatal=True)
        return Generation.G3
    if peek in _G1_HEADS:
        if n not in (7, 8):
            raise ProtocolError(f"G1 client type of {n} bytes", kind="unknown_peer", fatal=True)
        return Generation.G1
    raise ProtocolError(f"first bytes {bytes(head[:11]).hex()} are not a PyMoDAQ client type",
                        kind="unknown_peer", fatal=True)


def make_codec(generation: Generation, role: Role, *, dialect: Dialect = Dialect.G1A,
               detect: bool = True, max_message: int = DEFAULT_MAX_MESSAGE,
               max_string: int = DEFAULT_MAX_STRING,
               budget: ReceiveBudget | None = None) -> Codec:
    if generation is Generation.G3:
        return G3Codec(role, max_message=max_message, max_string=max_string, budget=budget)
    return G1Codec(role, dialect=dialect, detect=detect, max_message=max_message,
                   max_string=max_string, budget=budget)
