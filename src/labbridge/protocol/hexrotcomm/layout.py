"""Packed little-endian C structs declared once, as data (spec hexrotcomm.md §2).

A :class:`Layout` is built from a list of ``(name, type)`` pairs, the way the C header declares
the struct. Types are ``u8 bool u16 i16 u32 i32 u64 i64 f64``, arrays ``f64[6]``, fixed strings
``char[50]`` and nested layouts (``(name, OTHER_LAYOUT, count)``). The layout compiles one
:class:`struct.Struct` with an explicit ``<`` (little-endian, no padding: spec §2 "little-endian,
always, independent of the host") and checks its size against the size the spec gives, at import
time, so a mistyped field cannot reach the wire.

Decoded values are immutable records of two shapes (ADR 0041):

* the common structs (Header, Command, CommandStatus) use hand-written ``typing.NamedTuple``
  classes given as ``record=``;
* device structs (config, telemetry: up to 100 fields, 50 Hz per controller) use a generated
  :class:`FlatRecord`: a tuple of the *flat* unpacked values with one read-only property per
  field (arrays come back as tuples, ``char[N]`` as text, ``bool`` as bool, nested structs as
  records). Decoding is then a single ``struct.unpack_from`` plus one ``tuple.__new__``.
"""

from __future__ import annotations

import functools
import operator
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from labbridge.protocol.base import ProtocolError

_SCALARS: dict[str, str] = {
    "u8": "B",
    "bool": "B",
    "u16": "H",
    "i16": "h",
    "u32": "I",
    "i32": "i",
    "u64": "Q",
    "i64": "q",
    "f64": "d",
}

_TYPE_RE = re.compile(r"^(?P<base>[a-z0-9]+)(?:\[(?P<count>\d+)\])?$")

FieldDecl = tuple[str, str] | tuple[str, "Layout", int]


class LayoutError(ValueError):
    """A struct declaration is inconsistent (wrong size, unknown type): a bug, found at import."""


def decode_reason(raw: bytes) -> str:
    """Text of a ``char[N]`` field: up to the first NUL or N bytes (spec §3.4 Decision)."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode("utf-8", errors="replace")


def encode_text(text: str, size: int) -> bytes:
    """At most ``size - 1`` UTF-8 bytes then NUL padding; never cuts a multi-byte character."""
    data = text.encode("utf-8")
    if len(data) > size - 1:
        data = data[: size - 1]
        while data and not _is_complete_utf8(data):
            data = data[:-1]
    return data.ljust(size, b"\0")


def _is_complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_bool(value: int) -> bool:
    if value > 1:
        raise ProtocolError(f"bool field holds {value}, expected 0 or 1", kind="bad_value",
                            fatal=True)
    return value == 1


class FlatRecord(tuple):  # type: ignore[type-arg]
    """Base of generated device-struct records: flat values, named read-only properties."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _layout: Layout

    def _asdict(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self._fields}

    def _replace(self, **values: Any) -> Any:
        d = self._asdict()
        d.update(values)
        return self._layout.make(**d)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({inner})"


def _bool_getter(a: int) -> Callable[[tuple[Any, ...]], bool]:
    def get(s: tuple[Any, ...]) -> bool:
        return bool(s[a] == 1)

    return get


def _text_getter(a: int) -> Callable[[tuple[Any, ...]], str]:
    def get(s: tuple[Any, ...]) -> str:
        return decode_reason(s[a])

    return get


def _nested_getter(sub: Layout, a: int, b: int) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    n = sub.n_flat

    def get(s: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(sub._new(s[i:i + n]) for i in range(a, b, n))

    return get


class _Field:
    """One declared field: kind ('scalar', 'bool', 'array', 'char', 'nested') and position."""

    __slots__ = ("count", "default", "kind", "name", "size", "start", "sub")

    def __init__(self, name: str, kind: str, start: int, count: int, size: int,
                 default: Any, sub: Layout | None = None) -> None:
        self.name = name
        self.kind = kind
        self.start = start  # index in the flat tuple
        self.count = count  # flat values taken
        self.size = size  # bytes
        self.default = default
        self.sub = sub


class Layout:
    """One packed struct: its fields, its byte size, its record type and its codec.

    ``decode(buf, offset)`` returns a record; ``encode(record)`` returns bytes; ``make(**kw)``
    builds a record with zero defaults. ``fields`` lists ``(name, type, offset, size)`` for
    documentation and vector tests.
    """

    _fmt_body: str
    n_flat: int
    size: int
    record: type[Any]

    def __init__(
        self,
        name: str,
        decl: Sequence[FieldDecl],
        *,
        size: int,
        record: type[Any] | None = None,
    ) -> None:
        self.name = name
        fmt: list[str] = []
        doc_fields: list[tuple[str, str, int, int]] = []
        fields: list[_Field] = []
        flat = 0
        offset = 0
        for item in decl:
            fname = item[0]
            if len(item) == 3:
                sub, count = item[1], item[2]
                assert isinstance(sub, Layout) and isinstance(count, int)
                fmt.append(sub._fmt_body * count)
                fsize = sub.size * count
                f = _Field(fname, "nested", flat, sub.n_flat * count, fsize,
                           tuple(sub.make() for _ in range(count)), sub)
                doc_type = f"{sub.name}[{count}]"
            else:
                ftype = item[1]
                assert isinstance(ftype, str)
                m = _TYPE_RE.match(ftype)
                if m is None:
                    raise LayoutError(f"{name}.{fname}: cannot parse type {ftype!r}")
                base, cnt = m["base"], m["count"]
                doc_type = ftype
                if base == "char":
                    if cnt is None:
                        raise LayoutError(f"{name}.{fname}: char needs a length")
                    n = int(cnt)
                    fmt.append(f"{n}s")
                    f = _Field(fname, "char", flat, 1, n, "")
                elif base in _SCALARS:
                    code = _SCALARS[base]
                    zero: Any = 0.0 if base == "f64" else (False if base == "bool" else 0)
                    width = struct.calcsize("<" + code)
                    if cnt is None:
                        fmt.append(code)
                        f = _Field(fname, "bool" if base == "bool" else "scalar", flat, 1,
                                   width, zero)
                    else:
                        if base == "bool":
                            raise LayoutError(f"{name}.{fname}: bool arrays are not supported")
                        n = int(cnt)
                        fmt.append(code * n)
                        f = _Field(fname, "array", flat, n, width * n, (zero,) * n)
                else:
                    raise LayoutError(f"{name}.{fname}: unknown type {ftype!r}")
            fields.append(f)
            doc_fields.append((fname, doc_type, offset, f.size))
            flat += f.count
            offset += f.size
        self._fmt_body = "".join(fmt)
        self.struct = struct.Struct("<" + self._fmt_body)
        self.size = self.struct.size
        if self.size != size or offset != size:
            raise LayoutError(f"{name}: declared fields take {self.size} bytes, expected {size}")
        self.n_flat = flat
        self.fields = tuple(doc_fields)
        self._fields = tuple(fields)
        self.names = tuple(f.name for f in fields)
        self._bool_idx = tuple(f.start for f in fields if f.kind == "bool")
        self._defaults = {f.name: f.default for f in fields}
        self.plain = all(f.kind == "scalar" for f in fields)
        self._unpack_from = self.struct.unpack_from
        if record is None:
            self.flat = True
            self.record = self._make_flat_class()
            self._new: Callable[[Iterable[Any]], Any] = self.record._make_flat
        else:
            self.flat = False
            if tuple(getattr(record, "_fields", ())) != self.names:
                raise LayoutError(f"{name}: record fields {getattr(record, '_fields', None)} "
                                  f"do not match the layout {self.names}")
            self.record = record
            # tuple.__new__ directly: the struct guarantees the length _make would check.
            self._new = functools.partial(tuple.__new__, record)

    # -- record classes ---------------------------------------------------------------------
    def properties(self, shift: int = 0) -> dict[str, property]:
        """One read-only property per field over a flat tuple holding this struct at ``shift``."""
        out: dict[str, property] = {}
        for f in self._fields:
            a, b = f.start + shift, f.start + shift + f.count
            if f.kind == "scalar":
                out[f.name] = property(operator.itemgetter(a))
            elif f.kind == "bool":
                out[f.name] = property(_bool_getter(a))
            elif f.kind == "array":
                out[f.name] = property(operator.itemgetter(slice(a, b)))
            elif f.kind == "char":
                out[f.name] = property(_text_getter(a))
            else:
                assert f.sub is not None
                out[f.name] = property(_nested_getter(f.sub, a, b))
        return out

    @property
    def bool_indices(self) -> tuple[int, ...]:
        """Flat indices of ``bool`` fields (validated at decode)."""
        return self._bool_idx

    def from_flat(self, t: tuple[Any, ...]) -> Any:
        """The record for already-unpacked flat values."""
        if self.flat or self.plain:
            return self._new(t)
        return self._new(self._group(t))

    def _make_flat_class(self) -> type[Any]:
        ns: dict[str, Any] = {"__slots__": (), "_fields": self.names, "_layout": self,
                              **self.properties()}
        cls = type(self.name.replace(".", "_"), (FlatRecord,), ns)
        cls._make_flat = classmethod(tuple.__new__)  # type: ignore[attr-defined]
        return cls

    # -- codec ------------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        """Decode one record from ``data[offset:offset + size]`` (which must hold it)."""
        t = self._unpack_from(data, offset)
        for i in self._bool_idx:
            _check_bool(t[i])
        if self.flat or self.plain:
            return self._new(t)
        return self._new(self._group(t))

    def encode(self, rec: Any) -> bytes:
        """Encode a record of this layout (a record of another layout is a TypeError)."""
        if self.flat:
            if not isinstance(rec, self.record):
                raise TypeError(f"{self.name}.encode() needs a {self.name} record, got "
                                f"{type(rec).__name__}")
            return self.struct.pack(*rec)
        if self.plain:
            return self.struct.pack(*rec)
        return self.struct.pack(*self._flatten(rec._asdict()))

    def make(self, **values: Any) -> Any:
        """A record with every field zero (or empty) except those given."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field(s) {sorted(unknown)}")
        if not self.flat:
            return self._new(values.get(n, d) for n, d in self._defaults.items())
        return self._new(self._flatten(values))

    def _flatten(self, values: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for f in self._fields:
            v = values.get(f.name, f.default)
            if f.kind == "scalar":
                out.append(v)
            elif f.kind == "bool":
                out.append(1 if v else 0)
            elif f.kind == "char":
                out.append(encode_text(v, f.size))
            elif f.kind == "array":
                if len(v) != f.count:
                    raise ValueError(f"{self.name}.{f.name} needs {f.count} values, got {len(v)}")
                out.extend(v)
            else:
                sub = f.sub
                assert sub is not None
                if len(v) != f.count // sub.n_flat:
                    raise ValueError(f"{self.name}.{f.name} needs {f.count // sub.n_flat} "
                                     f"records, got {len(v)}")
                for r in v:
                    out.extend(sub._flatten(r._asdict()) if hasattr(r, "_asdict") else r)
        return out

    def _group(self, t: tuple[Any, ...]) -> list[Any]:
        """Flat values -> field values (named-tuple records with arrays/char/bool/nested)."""
        out: list[Any] = []
        for f in self._fields:
            a = f.start
            if f.kind == "scalar":
                out.append(t[a])
            elif f.kind == "bool":
                out.append(t[a] == 1)
            elif f.kind == "char":
                out.append(decode_reason(t[a]))
            elif f.kind == "array":
                out.append(t[a:a + f.count])
            else:
                sub = f.sub
                assert sub is not None
                n = sub.n_flat
                out.append(tuple(sub._new(t[i:i + n]) for i in range(a, a + f.count, n)))
        return out

    def __repr__(self) -> str:
        return f"<Layout {self.name} {self.size} bytes>"
