"""The telemetry envelope: one ZeroMQ message per published value (spec pychron.md §13,
ARCHITECTURE.md principle 10, ADR 0030).

A labbridge message is a three-frame multipart message::

    frame 0  topic    UTF-8 dotted name, ``<node>.<device>.<signal>`` (1..255 bytes)
    frame 1  payload  JSON text (compact, key-sorted) | raw C-order array bytes | raw bytes
    frame 2  meta     the binary header below

ZeroMQ subscriptions are prefix matches on frame 0, so ``lab.valves.`` selects a subtree. The
payload sits in frame 1 so a plain pyzmq reader that takes ``frames[0], frames[1]`` sees the
topic and the JSON text; the meta frame rides last. Arrays travel as their own frame, so a
sender never concatenates a header and a large array and a receiver maps the frame with
``numpy.frombuffer`` without copying.

Meta frame (all integers big-endian, declared once in :data:`META`)::

    offset size field
    0      2    magic            b"LB"
    2      1    version          1
    3      1    encoding         1 = JSON, 2 = NDARRAY, 3 = BYTES
    4      8    publisher id     u64, random per publisher instance (1 .. 2**63-1)
    12     8    seq              u64, per (publisher, topic), first message = 1
    20     8    ts               f64, Unix seconds at the source (Device.emit time)
    28     2    descriptor size  u16, bytes that follow the fixed header
    30     2    reserved         0
    32     n    descriptor       NDARRAY only: u8 len + dtype str (ASCII, numpy ``dtype.str``),
                                 u8 ndim, ndim x u64 shape

The sequence number counts per topic (not per publisher) so that a subscriber that asked for
a subset of topics still sees a contiguous sequence on every topic it receives: a jump is a
loss, a first message with ``seq > 1`` is a late join (ADR 0031).
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from labbridge.protocol.base import ProtocolError, Side

#: Fixed part of the meta frame (see the module docstring for the layout).
META: Final = struct.Struct(">2sBBQQdHH")
MAGIC: Final = b"LB"
VERSION: Final = 1
#: Longest topic in bytes (ZeroMQ has no limit; ours keeps indexes and logs sane).
MAX_TOPIC: Final = 255
#: Largest descriptor (dtype + shape); 32 dimensions of u64 plus a dtype string.
MAX_DESCRIPTOR: Final = 2 + 64 + 8 * 32
#: Highest publisher id: ids fit SQLite's signed 64-bit INTEGER (the recorder stores them).
MAX_PUBLISHER_ID: Final = 2**63 - 1

Buffer = bytes | bytearray | memoryview


class Encoding(enum.IntEnum):
    """How frame 1 is encoded."""

    JSON = 1
    NDARRAY = 2
    BYTES = 3
    #: Not an envelope encoding: a legacy single-frame string (``<tag> <payload>``).
    LEGACY = 0


class Meta(NamedTuple):
    """The decoded meta frame (a NamedTuple: built once per received message, and a tuple
    is several times cheaper to create than a frozen dataclass; ADR 0033)."""

    encoding: Encoding
    publisher: int
    seq: int
    ts: float
    dtype: str = ""
    shape: tuple[int, ...] = ()


class Message(NamedTuple):
    """A decoded telemetry message (envelope form)."""

    topic: str
    value: Any
    meta: Meta


def _err(msg: str, kind: str = "bad_envelope") -> ProtocolError:
    return ProtocolError(msg, side=Side.PEER, kind=kind)


# -- topics ---------------------------------------------------------------------------------
_FORBIDDEN_TOPIC_CHARS = frozenset(" \t\r\n\x00")


def check_topic(topic: str) -> bytes:
    """Validate a dotted topic and return its UTF-8 bytes.

    A topic is one or more non-empty segments separated by ``.`` with no whitespace or NUL
    (the legacy single-string forms split the tag at the first space, §13).
    """
    raw = topic.encode("utf-8")
    if not raw or len(raw) > MAX_TOPIC:
        raise ProtocolError(f"topic must be 1..{MAX_TOPIC} bytes: {topic!r}", side=Side.OURS,
                            kind="bad_topic")
    if any(c in _FORBIDDEN_TOPIC_CHARS for c in topic) or "" in topic.split("."):
        raise ProtocolError(f"bad topic {topic!r}: empty segment or whitespace",
                            side=Side.OURS, kind="bad_topic")
    return raw


def make_topic(*parts: str) -> str:
    """Join parts into a topic, replacing characters a segment cannot hold with ``_``.

    Device display names in dashboard files may contain spaces (``Bone Gauge``); the topic
    keeps them readable as ``Bone_Gauge``.
    """
    clean = []
    for p in parts:
        s = "".join("_" if (c in _FORBIDDEN_TOPIC_CHARS) else c for c in p.strip())
        clean.append(s or "_")
    return ".".join(clean)


# -- JSON -----------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes | bytearray):
        return obj.decode("latin-1")
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


_loads: Final = json.JSONDecoder().decode
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                                   default=_json_default, allow_nan=True)


def dumps_compact(value: Any) -> bytes:
    """Compact, key-sorted JSON (our default payload form); NaN/inf are kept as JSON
    extensions because sensor readings do produce them."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"value cannot be sent as JSON: {exc}", side=Side.OURS,
                            kind="bad_value") from exc


# -- encoding -------------------------------------------------------------------------------
def encode_meta(encoding: Encoding, publisher: int, seq: int, ts: float,
                array: np.ndarray[Any, Any] | None = None) -> bytes:
    """Build the meta frame (the array, when given, supplies dtype and shape)."""
    if array is None:
        return META.pack(MAGIC, VERSION, encoding, publisher, seq, ts, 0, 0)
    return encode_meta_fields(encoding, publisher, seq, ts, array.dtype.str, array.shape)


def encode_meta_fields(encoding: Encoding, publisher: int, seq: int, ts: float,
                       dtype: str = "", shape: tuple[int, ...] = ()) -> bytes:
    """Build the meta frame from its fields (the recorder re-creates array metas)."""
    if encoding is not Encoding.NDARRAY:
        return META.pack(MAGIC, VERSION, encoding, publisher, seq, ts, 0, 0)
    dt = dtype.encode("ascii")
    if len(shape) > 32 or len(dt) > 64:
        raise ProtocolError("arrays of more than 32 dimensions are not supported",
                            side=Side.OURS, kind="bad_value")
    desc = struct.pack(f">B{len(dt)}sB{len(shape)}Q", len(dt), dt, len(shape), *shape)
    return META.pack(MAGIC, VERSION, encoding, publisher, seq, ts, len(desc), 0) + desc


def encode_value(value: Any) -> tuple[Encoding, Any, np.ndarray[Any, Any] | None]:
    """Pick the encoding of a value; returns (encoding, payload frame, array or None).

    numpy arrays with a plain (non-object, non-structured) dtype go as NDARRAY; ``bytes``
    as BYTES; anything else as JSON. The payload of an array is the array itself (its buffer),
    made C-contiguous only when it is not already.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.fields is not None:
            return Encoding.JSON, dumps_compact(value.tolist()), None
        arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        return Encoding.NDARRAY, arr, arr
    if isinstance(value, bytes | bytearray | memoryview):
        return Encoding.BYTES, value, None
    return Encoding.JSON, dumps_compact(value), None


_JSON_TYPES: Final = frozenset({dict, list, str, int, float, bool, type(None)})
_pack_meta: Final = META.pack


class EnvelopeEncoder:
    """Builds envelope frames for one publisher and numbers them per topic.

    ``max_topics`` bounds the per-topic counters; past it the least recently used counter is
    dropped and that topic restarts at 1, which subscribers count as a reset
    (:attr:`SequenceTracker.resets`), never as silently continuous (ADR 0031).
    ``last_seq`` is the sequence number of the message built last.
    """

    def __init__(self, publisher: int, *, max_topics: int = 100_000) -> None:
        if not 1 <= publisher <= MAX_PUBLISHER_ID:
            raise ValueError("publisher id must be in 1 .. 2**63-1")
        self.publisher = publisher
        self.max_topics = max_topics
        self._seq: OrderedDict[str, list[Any]] = OrderedDict()
        self.last_seq = 0

    def _slot(self, topic: str) -> list[Any]:
        slot = self._seq.get(topic)
        if slot is None:
            if len(self._seq) >= self.max_topics:
                self._seq.popitem(last=False)
            slot = [check_topic(topic), 0]
            self._seq[topic] = slot
        elif len(self._seq) > 1024:
            self._seq.move_to_end(topic)
        return slot

    def next_seq(self, topic: str) -> int:
        """The sequence number the next message on ``topic`` will carry."""
        slot = self._seq.get(topic)
        return 1 if slot is None else int(slot[1]) + 1

    def encode(self, topic: str, value: Any, ts: float) -> list[Any]:
        """Frames ``[topic, payload, meta]`` for one message (payload may be an ndarray).

        The value is encoded before the sequence number advances, so a value that cannot be
        encoded never leaves a hole in the sequence.
        """
        slot = self._seq.get(topic)
        if slot is None or len(self._seq) > 1024:
            slot = self._slot(topic)
        if type(value) in _JSON_TYPES:  # the common case, without the type dispatch
            payload: Any = dumps_compact(value)
            seq = slot[1] = slot[1] + 1
            self.last_seq = seq
            return [slot[0], payload,
                    _pack_meta(MAGIC, VERSION, 1, self.publisher, seq, ts, 0, 0)]
        enc, payload, arr = encode_value(value)
        seq = slot[1] = slot[1] + 1
        self.last_seq = seq
        return [slot[0], payload, encode_meta(enc, self.publisher, seq, ts, arr)]


# -- decoding -------------------------------------------------------------------------------
_unpack_meta: Final = META.unpack
_PLAIN: Final = {1: Encoding.JSON, 3: Encoding.BYTES}


def decode_meta(frame: Buffer) -> Meta:
    """Parse the meta frame; raises :class:`ProtocolError` (peer side) on anything wrong."""
    size = len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes
    if size == META.size:  # fast path: JSON or BYTES, no descriptor
        magic, version, enc, pub, seq, ts, dlen, _ = _unpack_meta(frame)
        if magic == MAGIC and version == VERSION and dlen == 0 and enc in _PLAIN:
            return Meta(_PLAIN[enc], pub, seq, ts)
    mv = memoryview(frame).cast("B")
    if len(mv) < META.size:
        raise _err(f"meta frame too short: {len(mv)} bytes (need {META.size})", "truncated")
    magic, version, enc, pub, seq, ts, dlen, _ = META.unpack_from(mv)
    if magic != MAGIC:
        raise _err(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise _err(f"unsupported envelope version {version}", "bad_version")
    if enc not in (1, 2, 3):
        raise _err(f"unknown payload encoding {enc}")
    if dlen > MAX_DESCRIPTOR or len(mv) != META.size + dlen:
        raise _err(f"descriptor length {dlen} does not match the frame ({len(mv)} bytes)",
                   "length_mismatch")
    encoding = Encoding(enc)
    if encoding is not Encoding.NDARRAY:
        if dlen:
            raise _err("descriptor present on a non-array payload")
        return Meta(encoding, pub, seq, ts)
    d = mv[META.size:]
    try:
        n = d[0]
        dtype = bytes(d[1 : 1 + n]).decode("ascii")
        ndim = d[1 + n]
        shape = struct.unpack_from(f">{ndim}Q", d, 2 + n)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise _err(f"bad array descriptor: {exc}", "truncated") from None
    if 2 + n + 8 * ndim != len(d):
        raise _err("array descriptor length mismatch", "length_mismatch")
    return Meta(encoding, pub, seq, ts, dtype, tuple(shape))


def decode_payload(meta: Meta, payload: Buffer) -> Any:
    """Decode frame 1 according to ``meta``; arrays are views on ``payload`` (no copy)."""
    if meta.encoding is Encoding.JSON:
        try:
            return _loads((payload if isinstance(payload, bytes) else bytes(payload))
                          .decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: deeply nested arrays/objects (b"[" * 100000) exhaust the stack
            raise _err(f"payload is not JSON: {type(exc).__name__}: {exc}",
                       "bad_payload") from None
    if meta.encoding is Encoding.BYTES:
        return payload
    try:
        dt = np.dtype(meta.dtype)
    except TypeError as exc:
        raise _err(f"bad dtype {meta.dtype!r}: {exc}", "bad_payload") from None
    if dt.hasobject:
        raise _err("object arrays are refused", "bad_payload")
    if dt.itemsize == 0 or dt.subdtype is not None:
        # "S0"/"V0"/"<U0" cannot be mapped by frombuffer; "(2,)<f8" would add dimensions the
        # shape in the descriptor does not name
        raise _err(f"unsupported array dtype {meta.dtype!r}", "bad_payload")
    count = math.prod(meta.shape) if meta.shape else 1
    nbytes = memoryview(payload).nbytes
    if count * dt.itemsize != nbytes:
        raise _err(f"array payload is {nbytes} bytes, shape {meta.shape} of "
                   f"{meta.dtype} needs {count * dt.itemsize}", "length_mismatch")
    try:
        return np.frombuffer(payload, dtype=dt, count=count).reshape(meta.shape)
    except ValueError as exc:
        raise _err(f"cannot map the array payload: {exc}", "bad_payload") from None


def decode(frames: Sequence[Buffer]) -> Message:
    """Decode a three-frame envelope message."""
    if len(frames) == 3:  # fast path: bytes frames, JSON payload
        t, p, m = frames
        if type(m) is bytes and len(m) == 32 and type(p) is bytes and type(t) is bytes:
            magic, version, enc, pub, seq, ts, dlen, _ = _unpack_meta(m)
            if magic == MAGIC and version == VERSION and enc == 1 and dlen == 0:
                try:
                    return Message(t.decode("utf-8"), _loads(p.decode("utf-8")),
                                   Meta(Encoding.JSON, pub, seq, ts))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    pass  # the full path below reports it precisely
    if len(frames) != 3:
        raise _err(f"an envelope has 3 frames, got {len(frames)}", "bad_frames")
    try:
        topic = bytes(frames[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise _err("topic is not UTF-8", "bad_topic") from None
    meta = decode_meta(frames[2])
    return Message(topic, decode_payload(meta, frames[1]), meta)
