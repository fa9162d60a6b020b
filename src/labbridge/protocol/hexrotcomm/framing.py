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
memoryview and queues them (the buffered bytes are bounded by ``max_buffer``; the link feeds
chunks of at most 64 KiB and drains events after each chunk).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, _NeedData
from labbridge.protocol.hexrotcomm.devices import DeviceSpec
from labbridge.protocol.hexrotcomm.layout import Layout
from labbridge.protocol.hexrotcomm.structs import (
    COMMAND,
    COMMAND_A,
    COMMAND_STATUS,
    COMMANDER_CSC,
    HEADER,
    HEADER_A24,
    HEADER_A36,
    CommandStatus,
    CommandStatusCode,
    FrameId,
    Generation,
)

#: Default bound of a decoder's buffer: far above one frame (<= 36 + 648 bytes) plus one
#: 64 KiB read, so only a peer that sends garbage faster than we decode can reach it.
DEFAULT_MAX_BUFFER = 256 * 1024

_NSEC = 1_000_000_000
#: Unix epoch (1970-01-01) as a Modified Julian Date.
_MJD_UNIX_EPOCH = 40587


class FrameKind(enum.Enum):
    STATUS = "status"
    TELEMETRY = "telemetry"
    CONFIG = "config"


class Frame(NamedTuple):
    """One decoded controller -> CSC message."""

    kind: FrameKind
    header: Any
    payload: Any


def split_time(t: float) -> tuple[int, int]:
    """Seconds as (sec, nsec) with ``nsec = floor(frac * 1e9)`` (spec §3.7)."""
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
        sec, nsec = split_time(tai)
        if self.generation is Generation.D:
            return HEADER.encode((frame_id, counter & 0xFFFFFFFF, sec, nsec))
        if self.header is HEADER_A24:
            return HEADER_A24.encode((self.sync_pattern, frame_id, counter & 0xFFFFFFFF, sec,
                                      nsec))
        days, rem = divmod(tai, 86400.0)
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
        return self.encode_frame(FrameKind.STATUS,
                                 CommandStatus(int(status), float(duration), reason),
                                 counter, tai)

    # -- encoding (CSC side) ----------------------------------------------------------------
    def make_command(self, code: int, counter: int, params: Sequence[float] = ()) -> Any:
        if len(params) > 6:
            raise ValueError("a command has at most 6 parameters")
        p = [float(x) for x in params] + [0.0] * (6 - len(params))
        first = COMMANDER_CSC if self.generation is Generation.D else self.sync_pattern
        return self.command.record(first, counter & 0xFFFFFFFF, int(code), *p)

    def encode_command(self, command: Any) -> bytes:
        return self.command.encode(command)

    @property
    def max_payload(self) -> int:
        return max(layout.size for _, layout in self.frames.values())


class FrameDecoder:
    """controller -> CSC stream: ``receive_data(bytes)``, ``next_event() -> Frame|NEED_DATA``.

    Errors (all fatal, the connection must be closed; spec §5.6 Decision, §9 quirk 2):

    * ``unknown_frame_id``: the header names no known payload (includes random bytes);
    * ``bad_header``: ``tai_nsec`` outside 0..999 999 999 in a telemetry/config header;
    * ``bad_value``: a ``bool`` byte other than 0/1 in a payload;
    * ``truncated``: :meth:`eof` with a partial frame buffered;
    * ``too_large``: more than ``max_buffer`` bytes held.
    """

    def __init__(self, profile: WireProfile, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.profile = profile
        self._buf = ReceiveBuffer(max_buffer)
        self._events: deque[Frame] = deque()
        self._error: ProtocolError | None = None
        hdr = profile.header
        self._hsize = hdr.size
        self._hunpack = hdr.struct.unpack_from
        self._hnew = hdr.record._make
        # frame_id position in the flat header tuple: 0 (gen D) or 1 (gen A).
        self._fid_index = hdr.names.index("frame_id")
        self._nsec_index = hdr.names.index("tai_nsec")
        self._frames = {fid: (kind, layout, layout.size)
                        for fid, (kind, layout) in profile.frames.items()}
        self.frames_decoded = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self) -> Frame | _NeedData:
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        self._decode_all()
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return NEED_DATA

    def _decode_all(self) -> None:
        view = self._buf.view()
        n = len(view)
        pos = 0
        hsize = self._hsize
        frames = self._frames
        out = self._events
        try:
            while n - pos >= hsize:
                h = self._hunpack(view, pos)
                fid = h[self._fid_index]
                entry = frames.get(fid)
                if entry is None:
                    raise ProtocolError(
                        f"unknown frame id {fid} in header {bytes(view[pos:pos + hsize]).hex()}",
                        kind="unknown_frame_id", fatal=True)
                kind, layout, psize = entry
                if n - pos < hsize + psize:
                    break
                if kind is not FrameKind.STATUS and not 0 <= h[self._nsec_index] < _NSEC:
                    raise ProtocolError(
                        f"corrupt header: tai_nsec={h[self._nsec_index]} out of range "
                        f"(header {bytes(view[pos:pos + hsize]).hex()})",
                        kind="bad_header", fatal=True)
                out.append(Frame(kind, self._hnew(h), layout.decode(view, pos + hsize)))
                pos += hsize + psize
        except ProtocolError as exc:
            self._error = exc
        finally:
            view.release()
            self.frames_decoded += len(out)
            self._buf.skip(pos)

    def eof(self) -> None:
        """The peer closed: a partial frame left over means the stream was truncated."""
        if self._buf and self._error is None:
            held = len(self._buf)
            self._error = ProtocolError(
                f"stream truncated: {held} byte(s) of an incomplete frame at end of stream",
                kind="truncated", fatal=True)
            raise self._error


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

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    def next_event(self) -> Any:
        if not self._events:
            size = self.layout.size
            count = len(self._buf) // size
            if count:
                view = self._buf.view()
                try:
                    for i in range(count):
                        self._events.append(self.layout.decode(view, i * size))
                finally:
                    view.release()
                self._buf.skip(count * size)
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def eof(self) -> None:
        if self._buf:
            raise ProtocolError(
                f"command stream truncated: {len(self._buf)} byte(s) of a partial command",
                kind="truncated", fatal=True)
