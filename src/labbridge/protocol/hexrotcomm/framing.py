"""Stream framing for both generations, sans-I/O (spec hexrotcomm.md §2, §3.6, §5.6).

There is no length, terminator or checksum on this wire: a reader takes a fixed-size header,
chooses the payload struct by ``frame_id`` and takes exactly ``sizeof(payload)`` bytes::

    controller -> CSC   +----------------------+---------------------------------+
                        | Header (24 or 36 B)  | payload chosen by frame_id      |
                        +----------------------+---------------------------------+
                        gen D: 1 -> CommandStatus (62), 2 -> Telemetry, 3 -> Config
                        gen A: per-device ids (spec §5.4), no CommandStatus

    CSC -> controller   +---------------------------------+
                        | Command (60 B gen D, 58 B gen A)| ... no header, back to back
                        +---------------------------------+

Because nothing marks frame boundaries, a byte lost or an unknown frame id leaves no way to
resynchronise. Decision (spec §5.6, §9 quirk 2): the decoder raises a *fatal*
:class:`ProtocolError` and the link closes the connection; it never "flushes" an arbitrary
count of bytes.

:class:`FrameDecoder` decodes every complete frame of a received chunk in one pass over one
memoryview and queues them; only the start of one frame is ever buffered (and never more than
``max_buffer``): the next chunk first completes it, then is decoded in place.

A frame whose real size differs from the profile's (another firmware's struct) cannot be seen
in the frame itself: only the header that follows it lands at the wrong place. So a frame is
handed out only once it is *confirmed*: the bytes after it form a valid header (known frame id,
``tai_nsec`` in range, ``tai_sec`` within a day of the previous header's). Generation A
(``strict``) waits for that next header; generation D also accepts a frame that ends exactly
where the received data ends (the controller writes one frame per call, and a command status
must not wait for the next telemetry frame). A frame followed by an invalid header is dropped,
never handed out: the error says what was found (ADR 0042 amendment).
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, _NeedData
from labbridge.protocol.hexrotcomm.devices import DeviceSpec
from labbridge.protocol.hexrotcomm.layout import Layout, encode_text
from labbridge.protocol.hexrotcomm.structs import (
    COMMAND,
    COMMAND_A,
    COMMAND_STATUS,
    COMMAND_STATUS_REASON_LEN,
    COMMANDER_CSC,
    HEADER,
    HEADER_A24,
    HEADER_A36,
    CommandStatusCode,
    FrameId,
    Generation,
)
from labbridge.protocol.hexrotcomm.tai import utc_from_tai

#: Default bound of a decoder's buffer: far above one frame (<= 36 + 648 bytes) plus one
#: 64 KiB read, so only a peer that sends garbage faster than we decode can reach it.
DEFAULT_MAX_BUFFER = 256 * 1024

_NSEC = 1_000_000_000
#: Header + CommandStatus of generation D as one struct (spec §3.2, §3.4).
_STATUS_FRAME = struct.Struct(HEADER.struct.format + COMMAND_STATUS.struct.format.lstrip("<"))
_EMPTY_REASON = b"\0" * COMMAND_STATUS_REASON_LEN
#: Whole frames of one id from which the vectorised path pays off.
_RUN_MIN = 8
#: Unix epoch (1970-01-01) as a Modified Julian Date.
_MJD_UNIX_EPOCH = 40587
#: Largest step of ``tai_sec`` between two consecutive timed headers of one stream; a larger
#: one means the "header" is not one (a frame of another size came before it).
MAX_TIME_STEP = 86400


class FrameKind(enum.Enum):
    STATUS = "status"
    TELEMETRY = "telemetry"
    CONFIG = "config"


class Frame(tuple):  # type: ignore[type-arg]
    """One decoded controller -> CSC message: the header's values then the payload's, flat.

    ``kind``, ``header`` (the header record) and ``payload`` (the payload record) are always
    there; every header and payload field is also an attribute (a payload field wins when a
    name is in both, e.g. ``mjd`` with the A-36 header). One tuple per frame, built by a single
    ``struct.unpack_from`` of header and payload together (ADR 0041): telemetry frames cost
    about one unpack each.
    """

    __slots__ = ()
    kind: FrameKind
    _hlayout: Layout
    _playout: Layout
    _hlen: int

    @property
    def header(self) -> Any:
        return self._hlayout.from_flat(self[: self._hlen])

    @property
    def payload(self) -> Any:
        return self._playout.from_flat(self[self._hlen:])

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {self.header!r}, {self.payload!r})"


def frame_class(kind: FrameKind, header: Layout, payload: Layout) -> type[Frame]:
    """The Frame subclass of one (header, payload) pair."""
    ns: dict[str, Any] = {"__slots__": (), "kind": kind, "_hlayout": header,
                          "_playout": payload, "_hlen": header.n_flat}
    ns.update(header.properties(0))
    ns.update(payload.properties(header.n_flat))
    return type(f"{payload.name.replace('.', '_')}Frame", (Frame,), ns)


def split_time(t: float) -> tuple[int, int]:
    """Seconds as (sec, nsec) with ``nsec = floor(frac * 1e9)`` (spec §3.7)."""
    if t >= 0.0:  # the usual case: int() truncates, which is floor for t >= 0
        sec = int(t)
        return sec, min(_NSEC - 1, int((t - sec) * _NSEC))
    frac, whole = math.modf(t)
    if frac < 0:
        frac += 1.0
        whole -= 1.0
    return int(whole), min(_NSEC - 1, int(frac * _NSEC))


@dataclass(frozen=True, slots=True)
class WireProfile:
    """Everything that fixes the bytes of one endpoint: generation, device and options."""

    generation: Generation
    device: DeviceSpec
    header: Layout
    command: Layout
    config_frame_id: int
    telemetry_frame_id: int
    status_frame_id: int | None
    sync_pattern: int
    frames: Mapping[int, tuple[FrameKind, Layout]] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        device: DeviceSpec,
        generation: Generation | str,
        *,
        header_size: int = 24,
        config_frame_id: int | None = None,
        telemetry_frame_id: int | None = None,
        sync_pattern: int | None = None,
    ) -> WireProfile:
        gen = Generation(generation)
        if gen is Generation.D:
            header, command = HEADER, COMMAND
            cfg_id, tel_id, st_id = int(FrameId.CONFIG), int(FrameId.TELEMETRY), int(
                FrameId.COMMAND_STATUS)
        else:
            if header_size not in (24, 36):
                raise ValueError("generation A header size must be 24 or 36")
            header = HEADER_A24 if header_size == 24 else HEADER_A36
            command = COMMAND_A
            cfg_id = device.config_frame_id_a if config_frame_id is None else config_frame_id
            tel_id = (device.telemetry_frame_id_a if telemetry_frame_id is None
                      else telemetry_frame_id)
            st_id = None
            if cfg_id == tel_id:
                raise ValueError("config and telemetry frame ids must differ")
        frames: dict[int, tuple[FrameKind, Layout]] = {
            cfg_id: (FrameKind.CONFIG, device.config),
            tel_id: (FrameKind.TELEMETRY, device.telemetry),
        }
        if st_id is not None:
            frames[st_id] = (FrameKind.STATUS, COMMAND_STATUS)
        return cls(gen, device, header, command, cfg_id, tel_id, st_id,
                   device.sync_pattern if sync_pattern is None else sync_pattern, frames)

    # -- encoding (controller side) ---------------------------------------------------------
    def encode_header(self, frame_id: int, counter: int, tai: float) -> bytes:
        """Header for a frame sent at TAI ``tai`` (Unix seconds). Gen D and A-24 carry TAI
        (spec §3.7, §5.2); A-36 (v0.1-v0.18) carried UTC ``tv_sec``/``tv_nsec`` and MJD."""
        if self.generation is Generation.D:
            sec, nsec = split_time(tai)
            return HEADER.encode((frame_id, counter & 0xFFFFFFFF, sec, nsec))
        if self.header is HEADER_A24:
            sec, nsec = split_time(tai)
            return HEADER_A24.encode((self.sync_pattern, frame_id, counter & 0xFFFFFFFF, sec,
                                      nsec))
        utc = utc_from_tai(tai)
        sec, nsec = split_time(utc)
        days, rem = divmod(utc, 86400.0)
        return HEADER_A36.encode((self.sync_pattern, frame_id, counter & 0xFFFFFFFF,
                                  int(days) + _MJD_UNIX_EPOCH, rem / 86400.0, sec, nsec))

    def encode_frame(self, kind: FrameKind, payload: Any, counter: int, tai: float) -> bytes:
        """Header + payload as one bytes object (written with one call, spec §2)."""
        if kind is FrameKind.CONFIG:
            fid, layout = self.config_frame_id, self.device.config
        elif kind is FrameKind.TELEMETRY:
            fid, layout = self.telemetry_frame_id, self.device.telemetry
        else:
            if self.status_frame_id is None:
                raise ValueError("generation A has no command status")
            fid, layout = self.status_frame_id, COMMAND_STATUS
        return self.encode_header(fid, counter, tai) + layout.encode(payload)

    def encode_status(self, counter: int, status: CommandStatusCode, duration: float,
                      reason: str, tai: float) -> bytes:
        """Header(frame_id=1) + CommandStatus in one pack (the controller's hot path)."""
        if self.status_frame_id is None:
            raise ValueError("generation A has no command status")
        sec, nsec = split_time(tai)
        text = encode_text(reason, COMMAND_STATUS_REASON_LEN) if reason else _EMPTY_REASON
        return _STATUS_FRAME.pack(self.status_frame_id, counter & 0xFFFFFFFF, sec, nsec,
                                  int(status), float(duration), text)

    # -- encoding (CSC side) ----------------------------------------------------------------
    def make_command(self, code: int, counter: int, params: Sequence[float] = ()) -> Any:
        if len(params) > 6:
            raise ValueError("a command has at most 6 parameters")
        p = [float(x) for x in params] + [0.0] * (6 - len(params))
        first = COMMANDER_CSC if self.generation is Generation.D else self.sync_pattern
        return self.command.record(first, counter & 0xFFFFFFFF, int(code), *p)

    def encode_command(self, command: Any) -> bytes:
        return self.command.encode(command)


class FrameDecoder:
    """controller -> CSC stream: ``receive_data(bytes)``, ``next_event() -> Frame|NEED_DATA``.

    Errors (all fatal, the connection must be closed; spec §5.6 Decision, §9 quirk 2):

    * ``unknown_frame_id``: the header names no known payload (includes random bytes);
    * ``bad_header``: ``tai_nsec`` outside 0..999 999 999 in a telemetry/config header;
    * ``bad_value``: a ``bool`` byte other than 0/1 in a payload;
    * ``truncated``: :meth:`eof` with a partial frame buffered;
    * ``too_large``: more than ``max_buffer`` bytes held.
    """

    def __init__(self, profile: WireProfile, max_buffer: int = DEFAULT_MAX_BUFFER,
                 *, strict: bool | None = None) -> None:
        self.profile = profile
        #: Hand out a frame only when the next header confirms it (default: generation A).
        self.strict = profile.generation is Generation.A if strict is None else strict
        self._buf = ReceiveBuffer(max_buffer)
        # Decoded frames not yet handed out: single frames and lazy runs (iterators that
        # build one Frame per step from a private copy of the run's bytes).
        # (kind of every frame in the segment, or None when mixed; the frames)
        self._segments: deque[tuple[FrameKind | None, Iterable[Frame]]] = deque()
        self._current: Iterator[Frame] | None = None
        self._error: ProtocolError | None = None
        #: The last decoded frame, waiting for the header after it (see the module docstring).
        self._held: Frame | None = None
        #: tai_sec of the last timed header seen (None before the first).
        self._last_sec: int | None = None
        hdr = profile.header
        self._hsize = hdr.size
        self._hunpack = hdr.struct.unpack_from
        # frame_id: u32 at offset 0 (gen D) or u16 at offset 2 (gen A); read alone first.
        fid_index = hdr.names.index("frame_id")
        self._fid_unpack = struct.Struct("<I" if fid_index == 0 else "<2xH").unpack_from
        self._nsec_index = hdr.names.index("tai_nsec")
        self._sec_index = hdr.names.index("tai_sec")
        # Per frame id: kind, frame class, unpack of header+payload, total size, whether to
        # check the header time, flat indices of bools to validate.
        self._frames: dict[int, tuple[FrameKind, type[Frame], Any, int, bool,
                                      tuple[int, ...]]] = {}
        # Runs of frames of one id are checked with numpy (strided views of the frame id,
        # tai_sec, tai_nsec and bool bytes) and unpacked by struct.iter_unpack: no Python
        # bytecode per frame (ADR 0041).
        self._runs: dict[int, tuple[Any, Any, tuple[int, ...]]] = {}
        hoff = {f[0]: f[2] for f in hdr.fields}
        self._fid_off = hoff["frame_id"]
        self._fid_dtype = "<u4" if fid_index == 0 else "<u2"
        self._nsec_off = hoff["tai_nsec"]
        self._sec_off = hoff["tai_sec"]
        for fid, (kind, layout) in profile.frames.items():
            full = struct.Struct(hdr.struct.format + layout.struct.format.lstrip("<"))
            cls = frame_class(kind, hdr, layout)
            self._frames[fid] = (kind, cls, full.unpack_from,
                                 full.size, kind is not FrameKind.STATUS,
                                 tuple(i + hdr.n_flat for i in layout.bool_indices))
            bool_offsets = tuple(hdr.size + off for name, ftype, off, _ in layout.fields
                                 if ftype == "bool")
            self._runs[fid] = (full.iter_unpack, functools.partial(tuple.__new__, cls),
                               bool_offsets)
        self.frames_decoded = 0
        #: Frames decoded but never handed out because the header after them was invalid.
        self.frames_dropped = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take received bytes. Whole frames are decoded now; only a partial frame is kept.

        When nothing is buffered, frames are decoded straight from ``data`` (no copy into the
        buffer); the buffer then only ever holds the tail of one frame.
        """
        if self._error is not None:
            return  # the stream is dead: the error is raised by the next next_event()
        view = memoryview(data)
        try:
            start = self._top_up(view) if self._buf else 0
            if start == len(view) or self._error is not None:
                return
            if start == 0:
                frame = self.decode_single(data)
                if frame is not None:
                    self._segments.append((frame.kind, (frame,)))
                    return
            rest = view[start:] if start else view
            pos = self._decode_from(rest, isinstance(data, bytes), True)
            if pos < len(rest) and self._error is None:
                self._buf.append(rest[pos:])  # the start of the next frame
        finally:
            view.release()

    def _top_up(self, view: memoryview) -> int:
        """Complete the partial frame held from the front of ``view``; return the bytes taken.

        The buffer only ever holds the start of one frame: the rest of a chunk is decoded
        straight from the caller's bytes, with no copy into the buffer.
        """
        buf = self._buf
        taken = 0
        hsize = self._hsize
        if len(buf) < hsize:
            taken = min(hsize - len(buf), len(view))
            buf.append(view[:taken])
            if len(buf) < hsize:
                return taken
        head = buf.view()
        try:
            entry = self._frames.get(self._fid_unpack(head, 0)[0])
            if entry is not None and len(buf) < entry[3] and self._held is not None:
                # The header after the held frame is complete: it confirms it, or not.
                try:
                    self._check_header(head, 0, entry[4])
                except ProtocolError as exc:
                    self._fail(exc, None)
                    return len(view)
                self._release_held()
        finally:
            head.release()
        if entry is not None:
            more = min(entry[3] - len(buf), len(view) - taken)
            buf.append(view[taken:taken + more])
            taken += more
            if len(buf) < entry[3]:
                return taken
        self._decode_all(taken == len(view))  # the one whole frame held, or the error
        return taken

    def decode_single(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """``data`` decoded at once when it is exactly one frame that needs no checks (a
        command status: the acknowledgement path) and nothing is held or queued; else None,
        and ``receive_data`` must be used."""
        if (self.strict or len(data) < self._hsize or self._buf or self._segments
                or self._held is not None or self._current is not None
                or self._error is not None):
            return None
        entry = self._frames.get(self._fid_unpack(data, 0)[0])
        if entry is None or entry[3] != len(data) or entry[4] or entry[5]:
            return None
        self.frames_decoded += 1
        frame: Frame = tuple.__new__(entry[1], entry[2](data, 0))
        return frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def held(self) -> bool:
        """Whether a decoded frame waits for the header after it."""
        return self._held is not None

    def next_event(self) -> Frame | _NeedData:
        while True:
            if self._current is not None:
                frame = next(self._current, None)
                if frame is not None:
                    return frame
                self._current = None
            if self._segments:
                self._current = itertools.chain.from_iterable(f for _, f in self._segments)
                self._segments = deque()
                continue
            if self._error is not None:
                raise self._error
            self._decode_all(True)
            if not self._segments:
                if self._error is not None:
                    raise self._error
                return NEED_DATA

    def next_runs(self) -> list[tuple[FrameKind | None, Iterable[Frame]]]:
        """Every frame decodable now, grouped: ``(kind, frames)`` where every frame of the
        group has that kind, or ``(None, frames)`` for a mixed group. Lets a consumer handle a
        run of telemetry without looking at each frame's kind. Frames of a run are built as
        the group is consumed. Empty list: NEED_DATA. Frames confirmed before an error come
        first; the error is raised by the next call.
        """
        if (self._current is None and not self._segments and self._error is None
                and len(self._buf) >= self._hsize):
            self._decode_all(True)
        out: list[tuple[FrameKind | None, Iterable[Frame]]] = []
        if self._current is not None:
            out.append((None, self._current))
            self._current = None
        out.extend(self._segments)
        self._segments = deque()
        if not out and self._error is not None:
            raise self._error
        return out

    def _decode_all(self, at_end: bool) -> None:
        view = self._buf.view()
        try:
            pos = self._decode_from(view, False, at_end)
        finally:
            view.release()
        self._buf.skip(pos)

    # -- confirmation ------------------------------------------------------------------------
    def _release_held(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._segments.append((held.kind, (held,)))

    def _fail(self, exc: ProtocolError, singles: list[Frame] | None) -> None:
        """A header was invalid: the frame before it is not handed out; the stream is dead."""
        if singles:
            singles.pop()
            self.frames_dropped += 1
        elif self._held is not None:
            self._held = None
            self.frames_dropped += 1
        self._error = exc

    def _check_header(self, view: memoryview, pos: int, check_time: bool) -> None:
        """Time checks of the (known-id) header at ``pos``; ProtocolError if it is no header."""
        if not check_time:
            return
        h = self._hunpack(view, pos)
        self._check_time(h[self._sec_index], h[self._nsec_index], view, pos)

    def _check_time(self, sec: int, nsec: int, view: memoryview, pos: int) -> None:
        if not 0 <= nsec < _NSEC:
            raise ProtocolError(
                f"corrupt header: tai_nsec={nsec} out of range "
                f"(header {bytes(view[pos:pos + self._hsize]).hex()})",
                kind="bad_header", fatal=True)
        last = self._last_sec
        if last is not None and abs(sec - last) > MAX_TIME_STEP:
            raise ProtocolError(
                f"corrupt header: tai_sec={sec} is {sec - last:+d} s from the previous header's "
                f"(header {bytes(view[pos:pos + self._hsize]).hex()}); the frame before it was "
                f"probably not the size this profile expects ({self.profile.device.name}, "
                f"generation {self.profile.generation.value})",
                kind="bad_header", fatal=True)
        self._last_sec = sec

    def _decode_from(self, view: memoryview, immutable: bool, at_end: bool) -> int:
        """Queue every whole, confirmed frame in ``view``; return the bytes consumed.

        ``at_end``: the view ends where the received data ends (for the gen-D exact-end rule).
        Hot path (telemetry at up to hundreds of kHz): locals, one unpack and one
        tuple.__new__ per frame, runs unpacked in C. ``immutable``: ``view`` is over bytes, so
        a run may keep referring to it instead of copying.
        """
        n = len(view)
        pos = 0
        count = 0
        hsize = self._hsize
        frames = self._frames
        singles: list[Frame] = []
        append = singles.append
        fid_unpack = self._fid_unpack
        nidx = self._nsec_index
        sidx = self._sec_index
        new = tuple.__new__
        segments = self._segments
        try:
            while n - pos >= hsize:
                fid = fid_unpack(view, pos)[0]
                entry = frames.get(fid)
                if entry is None:
                    raise ProtocolError(
                        f"unknown frame id {fid} in header "
                        f"{bytes(view[pos:pos + hsize]).hex()}",
                        kind="unknown_frame_id", fatal=True)
                kind, cls, unpack, size, check_time, bools = entry
                if n - pos < size:
                    # A partial frame: its header still confirms the frame before it.
                    self._check_header(view, pos, check_time)
                    break
                k = (n - pos) // size
                if k >= _RUN_MIN:
                    # The last frame of the run is left to the one-frame path, so that the
                    # header after it is checked before it is handed out.
                    k = self._run_length(view, pos, k, fid, size, check_time) - 1
                    if k > 0:
                        iter_unpack, maker, _ = self._runs[fid]
                        end = pos + k * size
                        self._release_held()
                        if singles:
                            segments.append((None, singles))
                            singles = []
                            append = singles.append
                        # Immutable source: refer to it; else a private copy, so the buffer may
                        # change while the run is consumed.
                        run = view[pos:end] if immutable else bytes(view[pos:end])
                        segments.append((kind, map(maker, iter_unpack(run))))
                        pos = end
                        count += k
                        continue
                t = unpack(view, pos)
                if check_time:
                    self._check_time(t[sidx], t[nidx], view, pos)
                for i in bools:
                    if t[i] > 1:
                        raise ProtocolError(
                            f"{kind.value} frame: bool field holds {t[i]}, expected 0 or 1",
                            kind="bad_value", fatal=True)
                append(new(cls, t))
                pos += size
                count += 1
        except ProtocolError as exc:
            self._fail(exc, singles)
        self.frames_decoded += count
        if (self._error is None and pos > 0) or n - pos >= hsize:
            self._release_held()  # the first header of the view was valid
        if singles:
            # The last frame is confirmed by a header after it; else it waits for one
            # (generation D: or by ending exactly where the received data ends).
            rem = n - pos
            if self._error is None and (rem >= hsize or (rem == 0 and at_end
                                                         and not self.strict)):
                segments.append((None, singles))
            else:
                if self._error is None:
                    self._held = singles.pop()
                if singles:
                    segments.append((None, singles))
        elif self._error is None and n - pos == 0 and at_end and not self.strict:
            self._release_held()
        return pos

    def _run_length(self, view: memoryview, pos: int, k: int, fid: int, size: int,
                     check_time: bool) -> int:
        """How many of the next ``k`` whole frames share ``fid`` and pass the checks.

        A frame that fails is left to the one-frame path, which raises the error. The numpy
        views die with this function, so ``view`` can be released afterwards.
        """
        ids = np.ndarray((k,), self._fid_dtype, view, pos + self._fid_off, (size,))
        bad = np.flatnonzero(ids != fid)
        if bad.size:
            k = int(bad[0])
        sec = None
        if k and check_time:
            nsec = np.ndarray((k,), "<i8", view, pos + self._nsec_off, (size,))
            sec = np.ndarray((k,), "<i8", view, pos + self._sec_off, (size,))
            # |tai_sec - the previous header's| for each frame (np.diff with ``prepend``
            # costs more than the rest of the checks together on a read of 100 frames).
            bad_mask = (nsec < 0) | (nsec >= _NSEC)
            bad_mask[1:] |= np.abs(sec[1:] - sec[:-1]) > MAX_TIME_STEP
            if self._last_sec is not None and abs(int(sec[0]) - self._last_sec) > MAX_TIME_STEP:
                bad_mask[0] = True
            bad = np.flatnonzero(bad_mask)
            if bad.size:
                k = int(bad[0])
        for off in self._runs[fid][2]:
            if not k:
                break
            flags = np.ndarray((k,), "u1", view, pos + off, (size,))
            bad = np.flatnonzero(flags > 1)
            if bad.size:
                k = int(bad[0])
        if sec is not None and k > 1:
            # The caller hands out k - 1 frames: the last of them sets the reference time.
            self._last_sec = int(sec[k - 2])
        return k

    def eof(self) -> None:
        """The peer closed: a partial frame left over means the stream was truncated.

        A frame held for confirmation is handed out when the stream ends right after it.
        """
        if self._error is not None:
            return
        if self._buf:
            held = len(self._buf)
            self._fail(ProtocolError(
                f"stream truncated: {held} byte(s) of an incomplete frame at end of stream",
                kind="truncated", fatal=True), None)
            assert self._error is not None
            raise self._error
        self._release_held()


class CommandDecoder:
    """CSC -> controller stream of fixed-size commands (controller/mock side).

    The real controller reads each command with a single ``recv`` and no reassembly
    (spec §9 quirk 8); labbridge reassembles. Any 58/60 bytes form a syntactically valid
    command, so this decoder cannot detect errors other than a truncated stream at EOF.
    """

    def __init__(self, profile: WireProfile, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.layout = profile.command
        self._buf = ReceiveBuffer(max_buffer)
        self._events: deque[Any] = deque()
        self._iter_unpack = self.layout.struct.iter_unpack
        self._make = functools.partial(tuple.__new__, self.layout.record)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take received bytes; whole commands are decoded now, a partial one is kept.

        As in :class:`FrameDecoder`, only the start of one command is ever buffered: a held
        partial command is first completed from the front of ``data``, then the rest is
        decoded in place, so a chunk of any size never grows the buffer past one command.
        """
        size = self.layout.size
        view = memoryview(data)
        try:
            start = 0
            buf = self._buf
            if buf:
                start = min(size - len(buf), len(view))
                buf.append(view[:start])
                if len(buf) < size:
                    return
                self._events.append(self._make(self.layout.struct.unpack(buf.take(size))))
            rest = view[start:] if start else view
            whole = len(rest) - len(rest) % size
            if whole:  # decode straight from the caller's bytes
                self._events.extend(map(self._make, self._iter_unpack(rest[:whole])))
            if whole < len(rest):
                buf.append(rest[whole:])
        finally:
            view.release()

    @property
    def pending(self) -> bool:
        """Whether anything is held: a partial command, or whole ones not yet handed out."""
        return bool(self._events) or bool(self._buf)

    def next_event(self) -> Any:
        """The next whole command, or NEED_DATA (the buffer never holds a whole one)."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def eof(self) -> None:
        if self._buf:
            raise ProtocolError(
                f"command stream truncated: {len(self._buf)} byte(s) of a partial command",
                kind="truncated", fatal=True)
