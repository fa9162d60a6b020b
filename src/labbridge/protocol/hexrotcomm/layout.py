"""Packed little-endian C structs declared once, as data (spec hexrotcomm.md §2).

A :class:`Layout` is built from a list of ``(name, type)`` pairs, the way the C header declares
the struct. Types are ``u8 bool u16 i16 u32 i32 u64 i64 f64``, arrays ``f64[6]``, fixed strings
``char[50]`` and nested layouts (``(name, OTHER_LAYOUT, count)``). The layout compiles one
:class:`struct.Struct` with an explicit ``<`` (little-endian, no padding: spec §2 "little-endian,
always, independent of the host") and checks its size against the size the spec gives, at import
time, so a mistyped field cannot reach the wire.

Decoded values are immutable records (``typing.NamedTuple``; ADR 0041 explains why records are
tuples rather than frozen dataclasses here: a 56-field telemetry struct at 50 Hz per controller
must decode in one C call). Decoding is ``record_cls._make(group(struct.unpack_from(...)))``
where ``group`` is a small function generated once per layout that regroups the flat tuple into
arrays, strings and nested records; for layouts without arrays it is skipped entirely.
"""

from __future__ import annotations

import collections
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
        # Drop a partial UTF-8 sequence at the cut (continuation bytes are 0b10xxxxxx).
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
        fmt = ["<"]
        names: list[str] = []
        fields: list[tuple[str, str, int, int]] = []
        group_parts: list[str] = []
        flat_parts: list[str] = []
        defaults: list[Any] = []
        ns: dict[str, Any] = {"_text": decode_reason, "_bool": _check_bool}
        plain = True
        flat_index = 0
        offset = 0
        for i, item in enumerate(decl):
            fname = item[0]
            names.append(fname)
            if len(item) == 3:
                sub, count = item[1], item[2]
                assert isinstance(sub, Layout) and isinstance(count, int)
                fmt.append(sub._fmt_body * count)
                ns[f"_sub{i}"] = sub
                parts = []
                for _ in range(count):
                    n = sub.n_flat
                    parts.append(f"_sub{i}._from_flat(t[{flat_index}:{flat_index + n}])")
                    flat_index += n
                group_parts.append("(" + ", ".join(parts) + ",)")
                flat_parts.append(f"*[x for s in r[{i}] for x in _sub{i}._to_flat(s)]")
                fsize = sub.size * count
                fields.append((fname, f"{sub.name}[{count}]", offset, fsize))
                defaults.append(tuple(sub.make() for _ in range(count)))
                plain = False
                offset += fsize
                continue
            ftype = item[1]
            assert isinstance(ftype, str)
            m = _TYPE_RE.match(ftype)
            if m is None:
                raise LayoutError(f"{name}.{fname}: cannot parse type {ftype!r}")
            base, cnt = m["base"], m["count"]
            if base == "char":
                if cnt is None:
                    raise LayoutError(f"{name}.{fname}: char needs a length")
                n = int(cnt)
                fmt.append(f"{n}s")
                ns[f"_n{i}"] = n
                group_parts.append(f"_text(t[{flat_index}])")
                flat_parts.append(f"_enc(r[{i}], {n})")
                flat_index += 1
                fsize = n
                defaults.append("")
                plain = False
            elif base in _SCALARS:
                code = _SCALARS[base]
                zero: Any = 0.0 if base == "f64" else (False if base == "bool" else 0)
                if cnt is None:
                    fmt.append(code)
                    if base == "bool":
                        group_parts.append(f"_bool(t[{flat_index}])")
                        flat_parts.append(f"int(r[{i}])")
                        plain = False
                    else:
                        group_parts.append(f"t[{flat_index}]")
                        flat_parts.append(f"r[{i}]")
                    flat_index += 1
                    fsize = struct.calcsize("<" + code)
                    defaults.append(zero)
                else:
                    n = int(cnt)
                    if base == "bool":
                        raise LayoutError(f"{name}.{fname}: bool arrays are not supported")
                    fmt.append(code * n)
                    group_parts.append(f"t[{flat_index}:{flat_index + n}]")
                    flat_parts.append(f"*r[{i}]")
                    flat_index += n
                    fsize = struct.calcsize("<" + code) * n
                    defaults.append((zero,) * n)
                    plain = False
            else:
                raise LayoutError(f"{name}.{fname}: unknown type {ftype!r}")
            fields.append((fname, ftype, offset, fsize))
            offset += fsize
        self._fmt_body = "".join(fmt[1:])
        self.struct = struct.Struct("".join(fmt))
        self.size = self.struct.size
        if self.size != size or offset != size:
            raise LayoutError(f"{name}: declared fields take {self.size} bytes, expected {size}")
        self.n_flat = flat_index
        self.fields = tuple(fields)
        self.names = tuple(names)
        rec: type[Any]
        if record is None:
            rec = collections.namedtuple(name.replace(".", "_"), names)  # type: ignore[misc,no-redef]
        else:
            rec = record
            if tuple(getattr(rec, "_fields", ())) != self.names:
                raise LayoutError(f"{name}: record fields {getattr(rec, '_fields', None)} "
                                  f"do not match the layout {self.names}")
        self.record = rec
        self._new: Callable[[Iterable[Any]], Any] = rec._make
        self.plain = plain
        ns["_enc"] = encode_text
        # Generated once per layout; only names and integer indices are interpolated.
        self._group: Callable[[tuple[Any, ...]], tuple[Any, ...]] = eval(
            "lambda t: (" + "".join(p + ", " for p in group_parts) + ")", ns)
        self._flat: Callable[[Any], tuple[Any, ...]] = eval(
            "lambda r: (" + "".join(p + ", " for p in flat_parts) + ")", ns)
        self._defaults = tuple(defaults)

    # -- codec ------------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        """Decode one record from ``data[offset:offset + size]`` (which must hold it)."""
        t = self.struct.unpack_from(data, offset)
        if self.plain:
            return self._new(t)
        return self._new(self._group(t))

    def encode(self, rec: Any) -> bytes:
        """Encode a record (or any sequence of field values in declaration order)."""
        if self.plain:
            return self.struct.pack(*rec)
        return self.struct.pack(*self._flat(rec))

    def _from_flat(self, t: tuple[Any, ...]) -> Any:
        return self._new(t if self.plain else self._group(t))

    def _to_flat(self, rec: Any) -> tuple[Any, ...]:
        return tuple(rec) if self.plain else self._flat(rec)

    def make(self, **values: Any) -> Any:
        """A record with every field zero (or empty) except those given."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field(s) {sorted(unknown)}")
        return self._new(values.get(n, d) for n, d in zip(self.names, self._defaults,
                                                           strict=True))

    def from_mapping(self, values: Mapping[str, Any]) -> Any:
        return self.make(**values)

    def __repr__(self) -> str:
        return f"<Layout {self.name} {self.size} bytes>"
