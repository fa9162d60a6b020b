"""G3 codec: the type-tagged object encoding of PyMoDAQ 5.0 to 5.1 (spec pymodaq.md §5).

Layout (all integers u32 big-endian)::

    MESSAGE = u32 N | OBJ                     N = len(OBJ), one MESSAGE per command or payload
    OBJ     = u32 t | t bytes tag | BODY(tag) tag = Python class name ("str", "ndarray"...)
    STR     = u32 n | n bytes UTF-8           untagged, used inside bodies

    BODY(NoneType) = (empty)
    BODY(str)      = STR
    BODY(bytes)    = u32 n | raw
    BODY(float|int|bool|complex) = STR dtype | u32 n | raw  (1-element numpy array)
    BODY(ndarray)  = STR dtype | u32 nbytes | u32 ndim | ndim x u32 dim | raw (C order)
    BODY(list|tuple) = u32 count | count x OBJ
    BODY(dict)     = OBJ(list of keys) | one OBJ per value
    BODY(Axis)     = OBJ label | OBJ units | OBJ data | OBJ index | OBJ spread_order
    BODY(DataWithAxes family) = see objects.DataWithAxes (§5.2)
    BODY(DataToExport family) = OBJ timestamp | OBJ name | OBJ list | OBJ extra names | extras

Decisions (§5.4): type tags are matched exactly against a fixed table (an unknown tag is a
``ProtocolError`` naming it); numpy scalars are converted before encoding; structured dtypes are
refused; a frame must be consumed exactly. Arrays decoded from a big frame are writable
``numpy.frombuffer`` views of that frame's own buffer (no copy); arrays from small frames are
copies (writable too).

:func:`encode_chunks` returns the pieces of a message so a large array is written from its own
memory (``transport.writelines``) instead of being copied into one bytes object.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any, Final

import numpy as np

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.pymodaq._wire import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_STRING,
    TAKE,
    U32,
    Parser,
    PullDecoder,
    ReceiveBudget,
    dtype_string,
    parse_dtype,
    raw_view,
    read,
    str_bytes,
    u32,
)
from labbridge.protocol.pymodaq.objects import (
    AXIS_CLASSES,
    DTE_CLASSES,
    DWA_CLASSES,
    Axis,
    DataToExport,
    DataWithAxes,
    ParameterWithPath,
)

#: Deepest nesting of lists / dicts / data objects accepted from a peer.
MAX_DEPTH: Final = 32

Chunk = bytes | memoryview

_SCALAR_DTYPES: Final = {"float": "<f8", "int": "<i8", "bool": "|b1", "complex": "<c16"}
_unpack_u32 = U32.unpack_from

#: Scalars decoded with struct instead of numpy (dtype -> item size, unpack_from): the casts
#: give what the numpy path gives (float, int, bool).
_SCALAR_FAST: Final = {b"<f8": (8, struct.Struct("<d").unpack_from),
                       b"<i8": (8, struct.Struct("<q").unpack_from),
                       b"|b1": (1, struct.Struct("?").unpack_from)}


#: Every type tag the decoder knows, by its bytes (matched without decoding UTF-8).
_KNOWN_TAGS: Final = {t.encode(): t for t in (
    "NoneType", "str", "bytes", "bool", "int", "float", "complex", "ndarray", "list", "tuple",
    "dict", "ParameterWithPath", *AXIS_CLASSES, *DWA_CLASSES, *DTE_CLASSES)}
_LONGEST_TAG: Final = max(map(len, _KNOWN_TAGS))


@functools.lru_cache(maxsize=MAX_DEPTH + 1)
def _dims(ndim: int) -> struct.Struct:
    """``ndim`` big-endian u32 (the dimensions of an array)."""
    return struct.Struct(f">{ndim}I")


def _tag_bytes(name: str) -> bytes:
    b = name.encode("utf-8")
    return U32.pack(len(b)) + b


#: Pre-encoded type tags and scalar headers: the encoder's hot path (command round trips).
_TAGS: Final = {name: _tag_bytes(name) for name in (
    "NoneType", "str", "bytes", "bool", "int", "float", "complex", "ndarray", "list", "tuple",
    "dict")}
_SCALAR_HEAD: Final = {kind: _TAGS[kind] + _tag_bytes(ds) + U32.pack(np.dtype(ds).itemsize)
                       for kind, ds in _SCALAR_DTYPES.items()}
_STRUCT: Final = {"float": struct.Struct("<d"), "int": struct.Struct("<q"),
                  "complex": struct.Struct("<dd")}


def _to_python_scalar(obj: Any) -> Any:
    """Numpy scalars become Python scalars (§9 #10: the real encoder cannot send them)."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.complexfloating):
        return complex(obj)
    return obj


# --- encoder -------------------------------------------------------------------------------------

def _tag(name: str, out: list[Chunk]) -> None:
    out.extend(str_bytes(name))


def _scalar_body(kind: str, value: Any, out: list[Chunk]) -> None:
    if kind == "int":
        if not -(2**63) <= value < 2**63:
            raise ProtocolError(f"integer {value} does not fit int64", side=Side.OURS,
                                kind="too_large")
        raw = np.array([value], dtype="<i8").tobytes()
    else:
        raw = np.array([value], dtype=_SCALAR_DTYPES[kind]).tobytes()
    out.extend(str_bytes(_SCALAR_DTYPES[kind]))
    out.append(u32(len(raw)))
    out.append(raw)


def _ndarray_body(a: np.ndarray, out: list[Chunk]) -> None:
    ds = dtype_string(a.dtype)
    raw = raw_view(a)
    out.extend(str_bytes(ds))
    out.append(u32(len(raw)))
    out.append(u32(a.ndim) + b"".join(u32(d) for d in a.shape))
    out.append(raw)


def _encode(obj: Any, out: list[Chunk], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError("object nested too deeply to encode", side=Side.OURS)
    t = type(obj)
    if t is str:  # fast paths for the exact built-in types (most fields of every message)
        b = obj.encode("utf-8")
        out.append(_TAGS["str"] + U32.pack(len(b)) + b)
        return
    if t is float or (t is int and -(2**63) <= obj < 2**63):
        kind = "float" if t is float else "int"
        out.append(_SCALAR_HEAD[kind] + _STRUCT[kind].pack(obj))
        return
    if t is bool:
        out.append(_SCALAR_HEAD["bool"] + (b"\x01" if obj else b"\x00"))
        return
    if isinstance(obj, np.generic):
        obj = _to_python_scalar(obj)
    if obj is None:
        _tag("NoneType", out)
    elif isinstance(obj, str):
        _tag("str", out)
        out.extend(str_bytes(obj))
    elif isinstance(obj, bytes | bytearray | memoryview):
        _tag("bytes", out)
        b = bytes(obj)
        out.append(u32(len(b)))
        out.append(b)
    elif isinstance(obj, bool):
        _tag("bool", out)
        _scalar_body("bool", obj, out)
    elif isinstance(obj, int):
        _tag("int", out)
        _scalar_body("int", obj, out)
    elif isinstance(obj, float):
        _tag("float", out)
        _scalar_body("float", obj, out)
    elif isinstance(obj, complex):
        _tag("complex", out)
        _scalar_body("complex", obj, out)
    elif isinstance(obj, np.ndarray):
        _tag("ndarray", out)
        _ndarray_body(obj, out)
    elif isinstance(obj, list | tuple):
        _tag("list" if isinstance(obj, list) else "tuple", out)
        out.append(u32(len(obj)))
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        _tag("dict", out)
        keys = list(obj)
        _encode(keys, out, depth + 1)
        for k in keys:
            _encode(obj[k], out, depth + 1)
    elif isinstance(obj, Axis):
        _tag(obj.cls_name, out)
        _encode(obj.label, out, depth + 1)
        _encode(obj.units, out, depth + 1)
        _encode(obj.data, out, depth + 1)
        _encode(int(obj.index), out, depth + 1)
        _encode(int(obj.spread_order), out, depth + 1)
    elif isinstance(obj, DataWithAxes):
        _encode_dwa(obj, out, depth)
    elif isinstance(obj, DataToExport):
        _tag(obj.cls_name, out)
        _encode(float(obj.timestamp), out, depth + 1)
        _encode(obj.name, out, depth + 1)
        _encode(list(obj.data), out, depth + 1)
        _encode_extras(obj.extra, out, depth)
    elif isinstance(obj, ParameterWithPath):
        _tag("ParameterWithPath", out)
        _encode(list(obj.path), out, depth + 1)
        _encode(obj.xml, out, depth + 1)
    else:
        raise ProtocolError(f"cannot encode a {type(obj).__name__} in G3", side=Side.OURS,
                            kind="unsupported_type")


def _encode_extras(extra: tuple[tuple[str, Any], ...], out: list[Chunk], depth: int) -> None:
    _encode([name for name, _ in extra], out, depth + 1)
    for _, value in extra:
        _encode(value, out, depth + 1)


def _encode_dwa(d: DataWithAxes, out: list[Chunk], depth: int) -> None:
    if d.cls_name not in DWA_CLASSES:
        raise ProtocolError(f"unknown DataWithAxes class {d.cls_name!r}", side=Side.OURS)
    _tag(d.cls_name, out)
    _encode(float(d.timestamp), out, depth + 1)
    _encode(d.name, out, depth + 1)
    _encode(d.source, out, depth + 1)
    _encode(d.dim, out, depth + 1)
    _encode(d.distribution, out, depth + 1)
    _encode(list(d.data), out, depth + 1)
    _encode(d.units, out, depth + 1)
    _encode(list(d.labels), out, depth + 1)
    _encode(d.origin, out, depth + 1)
    _encode([int(i) for i in d.nav_indexes], out, depth + 1)
    _encode(list(d.axes), out, depth + 1)
    _encode(list(d.errors), out, depth + 1)
    _encode_extras(d.extra, out, depth)


def encode_object(obj: Any) -> bytes:
    """OBJ without the outer frame (what LECO carries, §11)."""
    out: list[Chunk] = []
    _encode(obj, out)
    return b"".join(out)


def encode_chunks(obj: Any) -> list[Chunk]:
    """A whole MESSAGE (``u32 N | OBJ``) as pieces; large arrays are views, not copies."""
    out: list[Chunk] = [b""]
    _encode(obj, out)
    out[0] = u32(sum(len(c) for c in out))
    return out


def encode_message(obj: Any) -> bytes:
    """A whole MESSAGE as one bytes object (byte-identical to the real encoder, §5)."""
    return b"".join(encode_chunks(obj))


# --- decoder over one complete frame ---------------------------------------------------------------

class _Reader:
    """Decode OBJs from one complete buffer with an offset (no slicing copies)."""

    __slots__ = ("buf", "copy", "end", "max_string", "pos")

    def __init__(self, buf: bytes | bytearray | memoryview, *, copy: bool,
                 max_string: int = DEFAULT_MAX_STRING) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.end = len(self.buf)
        self.copy = copy
        self.max_string = max_string

    def _short(self, n: int, what: str) -> ProtocolError:
        return ProtocolError(f"frame too short: {what} needs {n} bytes, "
                             f"{self.end - self.pos} left", kind="length_mismatch", fatal=True)

    def u32(self, what: str = "u32") -> int:
        pos = self.pos
        if self.end - pos < 4:
            raise self._short(4, what)
        self.pos = pos + 4
        return int(_unpack_u32(self.buf, pos)[0])

    def raw(self, n: int, what: str) -> memoryview:
        pos = self.pos
        if self.end - pos < n:
            raise self._short(n, what)
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def string(self, what: str = "string") -> str:
        buf, pos = self.buf, self.pos
        if self.end - pos < 4:
            raise self._short(4, what + " length")
        n = _unpack_u32(buf, pos)[0]
        pos += 4
        if n > self.max_string:
            raise ProtocolError(f"{what} of {n} bytes exceeds the limit of {self.max_string}",
                                kind="too_large", fatal=True)
        if self.end - pos < n:
            self.pos = pos
            raise self._short(n, what)
        self.pos = pos + n
        try:
            return str(buf[pos : pos + n], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8", kind="bad_string",
                                fatal=True) from None

    def scalar(self, tag: str) -> Any:
        buf, pos, end = self.buf, self.pos, self.end
        # Fast path: a dtype the encoders use for scalars, exactly one element (what every
        # sender writes). Anything else takes the general path below, errors included.
        if end - pos >= 4:
            n = _unpack_u32(buf, pos)[0]
            p = pos + 4
            if n <= 4 and end - p >= n + 4:
                fast = _SCALAR_FAST.get(bytes(buf[p : p + n]))
                if fast is not None:
                    size, unpack = fast
                    p += n
                    if _unpack_u32(buf, p)[0] == size and end - p - 4 >= size:
                        self.pos = p + 4 + size
                        return unpack(buf, p + 4)[0]
        ds = self.string("dtype")
        dt = parse_dtype(ds)
        n = self.u32("scalar length")
        raw = self.raw(n, "scalar")
        if n < dt.itemsize or n % dt.itemsize:
            raise ProtocolError(f"{tag} of dtype {ds} with {n} bytes", kind="length_mismatch",
                                fatal=True)
        v = np.frombuffer(raw, dtype=dt, count=1)[0]
        # Same casts as the real decoder (§5.4), decided by the dtype kind; 'u' -> int [lb].
        if dt.kind == "f":
            return float(v)
        if dt.kind in "iu":
            return int(v)
        if dt.kind == "c":
            return complex(v)
        return bool(v)

    def ndarray(self) -> np.ndarray:
        ds = self.string("dtype")
        dt = parse_dtype(ds)
        nbytes = self.u32("array byte count")
        ndim = self.u32("array ndim")
        if ndim > MAX_DEPTH:
            raise ProtocolError(f"array with {ndim} dimensions", kind="bad_shape", fatal=True)
        if self.end - self.pos >= 4 * ndim:
            shape = _dims(ndim).unpack_from(self.buf, self.pos)
            self.pos += 4 * ndim
        else:
            shape = tuple(self.u32("array dimension") for _ in range(ndim))
        count = math.prod(shape)
        if count * dt.itemsize != nbytes:
            raise ProtocolError(f"array shape {shape} of {ds} needs {count * dt.itemsize} bytes, "
                                f"header says {nbytes}", kind="length_mismatch", fatal=True)
        raw = self.raw(nbytes, "array data")
        a = np.frombuffer(raw, dtype=dt, count=count).reshape(shape)
        if self.copy:
            a = a.copy()
        return a if a.ndim else a.reshape(1)  # np.atleast_1d

    def tag(self) -> str:
        """The type tag of the next OBJ. A known tag is matched on its bytes (no UTF-8
        decoding); anything else is read as a string, with its errors."""
        buf, pos, end = self.buf, self.pos, self.end
        if end - pos >= 4:
            n = _unpack_u32(buf, pos)[0]
            p = pos + 4
            if n <= _LONGEST_TAG and n <= self.max_string and end - p >= n:
                tag = _KNOWN_TAGS.get(bytes(buf[p : p + n]))
                if tag is not None:
                    self.pos = p + n
                    return tag
        return self.string("type tag")

    def obj(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("objects nested too deeply", kind="too_deep", fatal=True)
        tag = self.tag()
        d = depth + 1
        if tag == "str":
            return self.string("str")
        if tag == "NoneType":
            return None
        if tag == "bytes":
            n = self.u32("bytes length")
            return bytes(self.raw(n, "bytes"))
        if tag in _SCALAR_DTYPES:
            return self.scalar(tag)
        if tag == "ndarray":
            return self.ndarray()
        if tag in ("list", "tuple"):
            n = self.u32("item count")
            if n * 8 > self.end - self.pos:  # every OBJ takes at least 8 bytes
                raise ProtocolError(f"{tag} of {n} items cannot fit the frame",
                                    kind="length_mismatch", fatal=True)
            items = [self.obj(d) for _ in range(n)]
            return items if tag == "list" else tuple(items)
        if tag == "dict":
            keys = self.obj(d)
            if not isinstance(keys, list):
                raise ProtocolError("dict keys are not a list", kind="bad_object", fatal=True)
            try:
                return {k: self.obj(d) for k in keys}
            except TypeError:
                raise ProtocolError("dict key is not hashable", kind="bad_object",
                                    fatal=True) from None
        if tag in AXIS_CLASSES:
            label, units, data, index, spread = (self.obj(d) for _ in range(5))
            return Axis(label=_typed(label, str, "Axis.label"),
                        units=_typed(units, str, "Axis.units"),
                        data=None if data is None else _typed(data, np.ndarray, "Axis.data"),
                        index=_typed(index, int, "Axis.index"),
                        spread_order=_typed(spread, int, "Axis.spread_order"), cls_name=tag)
        if tag in DWA_CLASSES:
            return self._dwa(tag, d)
        if tag in DTE_CLASSES:
            ts = self.obj(d)
            name = self.obj(d)
            data = self.obj(d)
            extra = self._extras(d)
            items = _typed(data, list, "DataToExport.data")
            for it in items:
                _typed(it, DataWithAxes, "DataToExport.data item")
            return DataToExport(name=_typed(name, str, "DataToExport.name"), data=tuple(items),
                                timestamp=_number(ts, "DataToExport.timestamp"), extra=extra,
                                cls_name=tag)
        if tag == "ParameterWithPath":
            path = _typed(self.obj(d), list, "ParameterWithPath.path")
            xml = self.obj(d)
            return ParameterWithPath(path=tuple(str(p) for p in path), xml=xml)
        raise ProtocolError(f"unknown type tag {tag!r}", kind="unknown_type", fatal=True)

    def _extras(self, d: int) -> tuple[tuple[str, Any], ...]:
        names = _typed(self.obj(d), list, "extra_attribute_names")
        return tuple((_typed(n, str, "extra attribute name"), self.obj(d)) for n in names)

    def _dwa(self, tag: str, d: int) -> DataWithAxes:
        # Each field is checked by exact type first; _typed (isinstance, and the error with
        # the field's name) only when that fails, so no message is formatted on success.
        obj = self.obj
        ts = obj(d)
        name, source, dim, distribution = obj(d), obj(d), obj(d), obj(d)
        data = obj(d)
        if type(data) is not list:
            data = _typed(data, list, f"{tag}.data")
        units = obj(d)
        labels = obj(d)
        if type(labels) is not list:
            labels = _typed(labels, list, f"{tag}.labels")
        origin = obj(d)
        nav = obj(d)
        if type(nav) is not list:
            nav = _typed(nav, list, f"{tag}.nav_indexes")
        axes = obj(d)
        if type(axes) is not list:
            axes = _typed(axes, list, f"{tag}.axes")
        errors = obj(d)
        if errors is None:  # PyMoDAQ sends None when the data carries no errors
            errors = []
        elif not isinstance(errors, list | tuple):
            raise ProtocolError(f"{tag}.errors: expected a list, got {type(errors).__name__}",
                                kind="bad_object", fatal=True)
        extra = self._extras(d)
        nd = np.ndarray
        return DataWithAxes(
            cls_name=tag,
            name=name if type(name) is str else _typed(name, str, f"{tag}.name"),
            data=tuple(a if type(a) is nd else _typed(a, nd, f"{tag}.data item")
                       for a in data),
            timestamp=_number(ts, f"{tag}.timestamp") if type(ts) is not float else ts,
            source=source if type(source) is str else _typed(source, str, f"{tag}.source"),
            dim=dim if type(dim) is str else _typed(dim, str, f"{tag}.dim"),
            distribution=distribution if type(distribution) is str
            else _typed(distribution, str, f"{tag}.distribution"),
            units=units if type(units) is str else _typed(units, str, f"{tag}.units"),
            labels=tuple(x if type(x) is str else _typed(x, str, f"{tag}.labels item")
                         for x in labels),
            origin=origin if type(origin) is str else _typed(origin, str, f"{tag}.origin"),
            nav_indexes=tuple(i if type(i) is int else _typed(i, int, f"{tag}.nav_indexes item")
                              for i in nav),
            axes=tuple(a if type(a) is Axis else _typed(a, Axis, f"{tag}.axes item")
                       for a in axes),
            errors=tuple(e if type(e) is nd else _typed(e, nd, f"{tag}.errors item")
                         for e in errors),
            extra=extra)


def _typed(value: Any, t: type, what: str) -> Any:
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: expected {t.__name__}, got {type(value).__name__}",
                            kind="bad_object", fatal=True)
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what}: expected a number, got {type(value).__name__}",
                            kind="bad_object", fatal=True)
    return float(value)


def decode_object(body: bytes | bytearray | memoryview, *, copy: bool = True,
                  max_string: int = DEFAULT_MAX_STRING) -> Any:
    """Decode exactly one OBJ filling ``body`` (a frame without its u32 length)."""
    r = _Reader(body, copy=copy, max_string=max_string)
    obj = r.obj()
    if r.pos != r.end:
        raise ProtocolError(f"{r.end - r.pos} bytes left after the object in a frame",
                            kind="length_mismatch", fatal=True)
    return obj


class G3Object:
    """One decoded MESSAGE: the object and the frame length it came in."""

    __slots__ = ("nbytes", "obj")

    def __init__(self, obj: Any, nbytes: int) -> None:
        self.obj = obj
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"G3Object({self.obj!r}, nbytes={self.nbytes})"


class G3Framer(PullDecoder):
    """Push-based G3 stream decoder: yields :class:`G3Object` per MESSAGE.

    A frame longer than ``max_message`` is refused from its 4-byte header, before any of its
    body is buffered (spec §9 #2 and the issue's robustness list). A frame of at least
    ``BIG_THRESHOLD`` bytes is received into its own buffer, grown as its bytes arrive, and
    its arrays are views over it.
    """

    MIN_FRAME = 8  # u32 tag length and a tag of at least 4 bytes ("str" + its u32 is 11)

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_string: int = DEFAULT_MAX_STRING,
                 budget: ReceiveBudget | None = None) -> None:
        self.max_string = max_string
        super().__init__(max_message=max_message, budget=budget)

    def _parse(self) -> Parser:
        while True:
            self._boundary()
            (n,) = U32.unpack((yield (TAKE, 4)))
            if n > self.max_message:
                raise ProtocolError(f"frame of {n} bytes exceeds the maximum message length "
                                    f"{self.max_message}", kind="too_large", fatal=True)
            if n < self.MIN_FRAME:
                raise ProtocolError(f"frame of {n} bytes cannot hold an object",
                                    kind="length_mismatch", fatal=True)
            req = read(n)
            body = yield req
            obj = decode_object(body, copy=req[0] == TAKE, max_string=self.max_string)
            self._emit(G3Object(obj, n))

    def send(self, obj: Any) -> bytes:
        return encode_message(obj)
