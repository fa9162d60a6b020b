"""G1 codec: the seed generation, PyMoDAQ 1.6 to 3.6, both dialects (spec pymodaq.md §3, §4).

G1 has no outer frame: a message is a command string followed by fields whose layout depends on
the command, so the decoder must know every command of the direction it decodes (``role``)::

    STR(s)     = u32 n | n bytes UTF-8
    SCALAR(x)  = STR(dtype) | u32 nbytes | raw                      (first element is the value)
    ARRAY_a(A) = STR(dtype) | u32 nbytes | u32 Nrow | u32 Ncol | raw           (G1a, "1.6")
    ARRAY_b(A) = STR(dtype) | u32 nbytes | u32 ndim | ndim x u32 dim | raw     (G1b, "2.1")
    LIST_a(L)  = u32 count | count x ITEM                                      (no tags)
    LIST_b(L)  = u32 count | count x (STR tag | ITEM)   tag = "array" | "string" | "scalar"

An unknown command or list tag desynchronises a G1 stream for good, so it is a fatal
``ProtocolError`` (§9 #7, #8). The dialect is configured for sending and, with
``detect=True``, latched from the first unambiguous list, array or Info value received (§3.5).
Large arrays are received into one buffer of their own, grown as their bytes arrive, and
wrapped with ``numpy.frombuffer`` (no copy, writable).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Final

import numpy as np

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.pymodaq._wire import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_STRING,
    PEEK,
    TAKE,
    U32,
    Parser,
    PullDecoder,
    ReceiveBudget,
    dtype_string,
    looks_like_dtype,
    parse_dtype,
    raw_view,
    read,
    str_bytes,
    u32,
)
from labbridge.protocol.pymodaq.messages import (
    POSITION_QUERIES,
    SEND_DATA,
    AxisInfo,
    ClientType,
    Dialect,
    Done,
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
    command_name,
)

Chunk = bytes | memoryview
_G = Generator[tuple[int, int], Any, Any]

#: G1b list element tags (§3.1).
LIST_TAGS: Final = ("array", "string", "scalar")
#: Tags and class names only a G2 (PyMoDAQ 4.x) peer sends where G1 expects other bytes (§3.5).
G2_MARKERS: Final = frozenset({"DataActuator", "DataToExport", "DataWithAxes", "DataRaw",
                               "DataFromPlugins", "DataCalculated", "bool", "bytes", "list",
                               "axis", "dwa", "dte", "parameter"})
#: Most elements accepted in one list.
MAX_LIST: Final = 4096
#: Most dimensions accepted in a G1b array header.
MAX_NDIM: Final = 32


# --- encoding primitives ---------------------------------------------------------------------------

def encode_string(s: str | bytes) -> bytes:
    """STR (§3.1): ``00 00 00 07 GRABBER``."""
    return b"".join(str_bytes(s))


def scalar_chunks(x: Any, dtype: str | None = None) -> list[Chunk]:
    """SCALAR (§3.1): what ``np.array([x])`` gives on a 64-bit Linux sender unless ``dtype``."""
    if isinstance(x, bool | np.bool_):
        arr = np.array([bool(x)], dtype=dtype or "|b1")
    elif isinstance(x, int) and dtype is None:
        arr = np.array([x], dtype="<i8")
    elif isinstance(x, float) and dtype is None:
        arr = np.array([x], dtype="<f8")
    else:
        arr = np.array([x], dtype=dtype) if dtype else np.array([x])
    raw = arr.tobytes()
    return [*str_bytes(dtype_string(arr.dtype)), u32(len(raw)), raw]


def array_chunks(a: np.ndarray, dialect: Dialect) -> list[Chunk]:
    """ARRAY_a or ARRAY_b (§3.1); the raw bytes are a view of the array when C-ordered."""
    a = np.asarray(a)
    raw = raw_view(a)
    head = [*str_bytes(dtype_string(a.dtype)), u32(len(raw))]
    if dialect is Dialect.G1A:
        if a.ndim > 2:
            raise ProtocolError(f"G1a (1.6) cannot carry a {a.ndim}-D array; use dialect 2.1",
                                side=Side.OURS, kind="unsupported_shape")
        nrow, ncol = (a.shape if a.ndim == 2 else (a.size, 1))
        head.append(u32(nrow) + u32(ncol))
    else:
        head.append(u32(a.ndim) + b"".join(u32(d) for d in a.shape))
    return [*head, raw]


def list_chunks(items: list[Any] | tuple[Any, ...], dialect: Dialect) -> list[Chunk]:
    """LIST_a / LIST_b (§3.1) of arrays, strings and scalars."""
    out: list[Chunk] = [u32(len(items))]
    for it in items:
        if isinstance(it, np.ndarray):
            if dialect is Dialect.G1B:
                out.extend(str_bytes("array"))
            out.extend(array_chunks(it, dialect))
        elif isinstance(it, str):
            if dialect is Dialect.G1B:
                out.extend(str_bytes("string"))
            out.extend(str_bytes(it))
        elif isinstance(it, int | float | complex | np.generic):
            if dialect is Dialect.G1B:
                out.extend(str_bytes("scalar"))
            out.extend(scalar_chunks(it))
        else:
            raise ProtocolError(f"cannot put a {type(it).__name__} in a G1 list",
                                side=Side.OURS, kind="unsupported_type")
    return out


def message_chunks(msg: object, dialect: Dialect) -> list[Chunk]:
    """One message in the given dialect (§4); pieces, so big arrays are not copied."""
    out: list[Chunk] = list(str_bytes(command_name(msg)))
    if isinstance(msg, Hello | Quit | MoveHome | StopMotion | GetPosition | SendData):
        return out
    if isinstance(msg, MoveAbs | MoveRel | PositionIs | MoveDone):
        out.extend(scalar_chunks(msg.value, msg.dtype))
    elif isinstance(msg, Infos):
        out.extend(str_bytes(msg.xml))
    elif isinstance(msg, InfoXml | SetInfo):
        out.extend(list_chunks(list(msg.path), dialect))
        out.extend(str_bytes(msg.xml))
    elif isinstance(msg, Info):
        out.extend(str_bytes(msg.name))
        if dialect is Dialect.G1A:
            try:
                raw = np.array([float(msg.value)], dtype=">f8").tobytes()
            except ValueError:
                raise ProtocolError("G1a Info values are numbers (big-endian doubles)",
                                    side=Side.OURS, kind="unsupported_type") from None
            out.extend([u32(8), raw])
        else:
            out.extend(str_bytes(str(msg.value)))
    elif isinstance(msg, Done):
        out.extend(list_chunks(list(msg.arrays), dialect))
    elif isinstance(msg, AxisInfo):
        out.extend(array_chunks(msg.data, dialect))
        out.extend(str_bytes(msg.label))
        out.extend(str_bytes(msg.units))
    else:  # pragma: no cover - command_name() already refused it
        raise ProtocolError(f"no G1 form for {msg!r}", side=Side.OURS)
    return out


# --- decoder -------------------------------------------------------------------------------------

class G1Codec(PullDecoder):
    """Sans-I/O G1 connection codec for one side (``role``) of one connection.

    ``role=Role.SERVER`` decodes what clients send (the first message must be the client type)
    and encodes server commands; ``Role.CLIENT`` the reverse. ``dialect`` is used for sending
    until a dialect is latched from received bytes (``detect=True``, §3.5 rule 4).
    """

    def __init__(self, role: Role, *, dialect: Dialect = Dialect.G1A, detect: bool = True,
                 max_message: int = DEFAULT_MAX_MESSAGE,
                 max_string: int = DEFAULT_MAX_STRING,
                 budget: ReceiveBudget | None = None) -> None:
        self.role = role
        self.dialect = dialect
        self.detect = detect
        self.latched: Dialect | None = None
        self.max_string = max_string
        self._array_limit = max_message
        super().__init__(max_message=max_message, budget=budget)

    @property
    def send_dialect(self) -> Dialect:
        return self.latched or self.dialect

    def send(self, msg: object) -> bytes:
        return b"".join(message_chunks(msg, self.send_dialect))

    def send_chunks(self, msg: object) -> list[Chunk]:
        return message_chunks(msg, self.send_dialect)

    # -- field readers (sub-generators) -----------------------------------------------------------
    def _u32(self) -> _G:
        (v,) = U32.unpack((yield (TAKE, 4)))
        return int(v)

    def _str(self, what: str) -> _G:
        n = yield from self._u32()
        if n > self.max_string:
            raise ProtocolError(f"{what} of {n} bytes exceeds the limit of {self.max_string}",
                                kind="too_large")
        raw = yield read(n)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8", kind="bad_string") from None

    def _raw_array(self, dt: np.dtype[Any], nbytes: int) -> _G:
        req = read(nbytes)
        raw = yield req
        a = np.frombuffer(raw, dtype=dt)
        return a.copy() if req[0] == TAKE else a

    def _array_head(self, dtype_text: str | None) -> _G:
        ds = dtype_text if dtype_text is not None else (yield from self._str("dtype"))
        if ds in G2_MARKERS:
            raise _g2()
        dt = parse_dtype(ds)
        nbytes = yield from self._u32()
        if nbytes > self._array_limit:
            raise ProtocolError(f"array of {nbytes} bytes exceeds the maximum message length "
                                f"{self._array_limit}", kind="too_large")
        if nbytes % dt.itemsize:
            raise ProtocolError(f"{nbytes} bytes is not a whole number of {ds} items",
                                kind="length_mismatch")
        return dt, nbytes

    def _array(self, dialect: Dialect | None, dtype_text: str | None = None) -> _G:
        """ARRAY in ``dialect``; ``None`` = not known yet: apply §3.5 rule 2."""
        dt, nbytes = yield from self._array_head(dtype_text)
        items = nbytes // dt.itemsize
        a_ = yield from self._u32()
        b_ = yield from self._u32()
        if dialect is None:
            dialect = yield from self._detect_array(a_, b_, items, nbytes)
        if dialect is Dialect.G1A:
            if b_ != 0 and a_ * b_ != items:
                raise ProtocolError(f"G1a array {a_}x{b_} does not match {items} items",
                                    kind="length_mismatch")
            if b_ == 0 and a_ != items:
                raise ProtocolError(f"G1a array of {a_} rows does not match {items} items",
                                    kind="length_mismatch")
            flat = yield from self._raw_array(dt, nbytes)
            return np.squeeze(flat.reshape(a_, b_)) if b_ != 0 else flat
        ndim = a_
        if ndim > MAX_NDIM:
            raise ProtocolError(f"array with {ndim} dimensions", kind="bad_shape")
        shape = [b_] if ndim >= 1 else []
        for _ in range(ndim - 1):
            shape.append((yield from self._u32()))
        if ndim == 0:
            # ndim 0 means no dimension follows: the u32 read as b_ was the first raw word.
            raise ProtocolError("G1b array with 0 dimensions", kind="bad_shape")
        if math.prod(shape) != items:
            raise ProtocolError(f"G1b array shape {tuple(shape)} does not match {items} items",
                                kind="length_mismatch")
        flat = yield from self._raw_array(dt, nbytes)
        return flat.reshape(shape)

    def _detect_array(self, a_: int, b_: int, items: int, nbytes: int) -> _G:
        """§3.5 rule 2: which dialect explains ``a_``, ``b_`` (both already consumed)."""
        a_ok = (a_ * b_ == items) if b_ != 0 else (a_ == items)
        b_maybe = 1 <= a_ <= MAX_NDIM
        if b_maybe and a_ == 1:
            b_ok = b_ == items
            if a_ok and b_ok:
                return Dialect.G1A  # same bytes, same 1-D array either way: no latch
        elif b_maybe:
            if a_ok and nbytes < 4 * (a_ - 1):
                return Dialect.G1A  # G1b would need bytes that may never come: no latch
            extra = yield (PEEK, 4 * (a_ - 1))
            dims = [b_, *(U32.unpack_from(extra, 4 * i)[0] for i in range(a_ - 1))]
            b_ok = math.prod(dims) == items
            if a_ok and b_ok:
                return self.dialect  # genuinely ambiguous: configured dialect, no latch
        else:
            b_ok = False
        if a_ok == b_ok:
            raise ProtocolError(f"array header ({a_}, {b_}) fits neither G1 dialect for "
                                f"{items} items", kind="length_mismatch")
        found = Dialect.G1A if a_ok else Dialect.G1B
        self._latch(found)
        return found

    def _latch(self, d: Dialect) -> None:
        if self.detect and self.latched is None:
            self.latched = d

    def _known(self) -> Dialect | None:
        if self.latched is not None:
            return self.latched
        return None if self.detect else self.dialect

    def _scalar(self) -> _G:
        ds = yield from self._str("dtype")
        if ds in G2_MARKERS:
            raise _g2()
        dt = parse_dtype(ds)
        n = yield from self._u32()
        if n < dt.itemsize or n % dt.itemsize or n > self.max_string:
            raise ProtocolError(f"scalar of dtype {ds} with {n} bytes", kind="length_mismatch")
        raw = yield read(n)
        v = np.frombuffer(raw, dtype=dt, count=1)[0]
        return ds, v.item()

    def _list(self, kind: str) -> _G:
        """LIST of arrays (``kind='data'``) or of strings (``kind='path'``), §3.5 rule 1."""
        count = yield from self._u32()
        if count > MAX_LIST:
            raise ProtocolError(f"list of {count} elements exceeds {MAX_LIST}", kind="too_large")
        if count == 0:
            return []
        first = yield from self._str("list element")
        dialect = self._known()
        if dialect is None:
            if first in LIST_TAGS:
                dialect = Dialect.G1B
            elif first in G2_MARKERS:
                raise _g2()
            elif kind == "path" or looks_like_dtype(first):
                dialect = Dialect.G1A
            else:
                raise ProtocolError(f"list element starts with {first!r}: neither a G1b tag "
                                    "nor a dtype", kind="bad_list")
            self._latch(dialect)
        out: list[Any] = []
        for i in range(count):
            if dialect is Dialect.G1B:
                tag = first if i == 0 else (yield from self._str("list tag"))
                if tag == "array":
                    out.append((yield from self._array(Dialect.G1B)))
                elif tag == "string":
                    out.append((yield from self._str("list string")))
                elif tag == "scalar":
                    out.append(np.array([(yield from self._scalar())[1]]))
                else:
                    raise ProtocolError(f"unknown G1b list tag {tag!r}", kind="unknown_type")
            else:
                pre = first if i == 0 else None
                if kind == "path":
                    out.append(pre if pre is not None else (yield from self._str("path")))
                else:
                    out.append((yield from self._array(Dialect.G1A, pre)))
        if kind == "path" and not all(isinstance(p, str) for p in out):
            raise ProtocolError("a parameter path holds non-strings", kind="bad_list")
        if kind == "data" and not all(isinstance(p, np.ndarray) for p in out):
            raise ProtocolError("a data list holds strings", kind="bad_list")
        return out

    def _info_value(self) -> _G:
        """§3.4 / §3.5 rule 3: G1a big-endian doubles or a G1b string."""
        n = yield from self._u32()
        if n > self.max_string:
            raise ProtocolError(f"Info value of {n} bytes", kind="too_large")
        raw = bytes((yield read(n)))
        dialect = self._known()
        if dialect is None:
            if n == 8 and not _printable(raw):
                self._latch(Dialect.G1A)
                dialect = Dialect.G1A
            else:
                dialect = Dialect.G1B
        if dialect is Dialect.G1A:
            if n < 8 or n % 8:
                raise ProtocolError(f"G1a Info value of {n} bytes is not doubles",
                                    kind="length_mismatch")
            return float(np.frombuffer(raw, dtype=">f8", count=1)[0])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("Info value is not UTF-8", kind="bad_string") from None

    # -- message parser ----------------------------------------------------------------------------
    def _parse(self) -> Parser:
        if self.role is Role.SERVER:
            self._boundary()
            first = yield from self._str("client type")
            try:
                self._emit(Hello(ClientType(first)))
            except ValueError:
                raise ProtocolError(f"{first!r} is not a valid client type (GRABBER or "
                                    "ACTUATOR)", kind="bad_client_type") from None
        while True:
            self._boundary()
            cmd = yield from self._str("command")
            msg = yield from (self._client_msg(cmd) if self.role is Role.SERVER
                              else self._server_msg(cmd))
            self._emit(msg)

    def _common(self, cmd: str) -> _G:
        if cmd == "Infos":
            return Infos((yield from self._str("settings XML")))
        if cmd == "Info_xml":
            path = yield from self._list("path")
            return InfoXml(tuple(path), (yield from self._str("settings XML")))
        if cmd == "Info":
            name = yield from self._str("Info name")
            return Info(name, (yield from self._info_value()))
        raise ProtocolError(f"unknown command {cmd!r} (a G1 stream cannot skip it)",
                            kind="unknown_command")

    def _client_msg(self, cmd: str) -> _G:
        if cmd in ("position_is", "move_done"):
            ds, v = yield from self._scalar()
            cls = PositionIs if cmd == "position_is" else MoveDone
            return cls(float(v.real) if isinstance(v, complex) else float(v), dtype=ds)
        if cmd == "Done":
            arrays = yield from self._list("data")
            return Done(tuple(arrays))
        if cmd in ("x_axis", "y_axis"):
            data = yield from self._array(self._known())
            label = yield from self._str("axis label")
            units = yield from self._str("axis units")
            return AxisInfo(cmd[0], data, label, units)
        if cmd == "Quit":
            return Quit()
        return (yield from self._common(cmd))

    def _server_msg(self, cmd: str) -> _G:
        if cmd in ("move_abs", "move_rel"):
            ds, v = yield from self._scalar()
            cls = MoveAbs if cmd == "move_abs" else MoveRel
            return cls(float(v.real) if isinstance(v, complex) else float(v), dtype=ds)
        if cmd == "move_home":
            return MoveHome()
        if cmd == "stop_motion":
            return StopMotion()
        if cmd in POSITION_QUERIES:
            return GetPosition(cmd)
        if cmd in SEND_DATA:
            return SendData(cmd[-2:])
        if cmd == "set_info":
            path = yield from self._list("path")
            return SetInfo(tuple(path), (yield from self._str("settings XML")))
        if cmd == "Quit":
            return Quit()
        return (yield from self._common(cmd))


def _printable(raw: bytes) -> bool:
    try:
        return raw.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False


def _g2() -> ProtocolError:
    return ProtocolError("PyMoDAQ 4.x (G2) peer: not supported (spec §8)",
                         kind="unsupported_peer")
