"""Common structs and enumerations of the hexapod/rotator link (spec hexrotcomm.md §3, §5).

Generation D (current real system, spec §3): ``Header`` 24 bytes, ``Command`` 60 bytes (no
header precedes it), ``CommandStatus`` 62-byte payload after a ``Header`` with frame id 1.

Generation A (seed 003, spec §5): ``HeaderA24`` (v0.19-v0.22, default) or ``HeaderA36``
(v0.1-v0.18), ``CommandA`` 58 bytes with a sync pattern, per-device frame ids.

Every size is checked when this module is imported (:class:`~.layout.Layout`).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from labbridge.protocol.hexrotcomm.layout import Layout

#: C ``LENGTH_CMD_STATUS_REASON`` (spec §3.4).
COMMAND_STATUS_REASON_LEN = 50
#: ``Commander`` value the CSC always sends (spec §3.3).
COMMANDER_CSC = 2
COMMANDER_GUI = 1


class Generation(enum.Enum):
    """Which wire generation an endpoint speaks (spec §1); never auto-detected."""

    A = "A"
    D = "D"


class FrameId(enum.IntEnum):
    """Generation D frame ids (spec §3.5)."""

    COMMAND_STATUS = 1
    TELEMETRY = 2
    CONFIG = 3


class CommandStatusCode(enum.IntEnum):
    ACK = 1
    NO_ACK = 2


class SetStateParam(enum.IntEnum):
    """``param1`` of ``SET_STATE``. Values 1, 4, 5, 7 exist only in generation A (spec §5.5)."""

    INVALID = 0
    START = 1
    ENABLE = 2
    STANDBY = 3
    DISABLE = 4
    EXIT = 5
    CLEAR_ERROR = 6
    ENTER_CONTROL = 7
    FAULT = 8


class ControllerState(enum.IntEnum):
    """Controller state carried (as f64) in telemetry.

    Generation D uses STANDBY, ENABLED and FAULT (spec §4.3); generation A adds DISABLED and
    OFFLINE (spec §5.5). The numbers do not collide, so one enum serves both.
    """

    STANDBY = 0
    DISABLED = 1
    ENABLED = 2
    OFFLINE = 3
    FAULT = 4


class OfflineSubstate(enum.IntEnum):
    PUBLISH_ONLY = 0
    AVAILABLE = 1


class EnabledSubstate(enum.IntEnum):
    STATIONARY = 0
    MOVING_POINT_TO_POINT = 1
    SLEWING_OR_TRACKING = 2
    CONTROLLED_STOPPING = 3
    INITIALIZING = 4
    RELATIVE = 5
    CONSTANT_VELOCITY = 6


class FaultSubstate(enum.IntEnum):
    NO_ERROR = 0
    EMERGENCY_STOPPING = 1
    WAIT_CLEAR_ERROR = 2


class ApplicationStatus(enum.IntFlag):
    """Bits of ``application_status`` (spec §4.3)."""

    FOLLOWING_ERROR = 0x1
    MOVE_COMPLETE = 0x2
    EUI_CONNECTED = 0x4
    RELATIVE_MOVE_MODE = 0x8
    SYNC_MODE = 0x10
    COMMAND_REJECTED = 0x20
    SAFETY_INTERLOCK = 0x40
    EXTEND_LIMIT_SWITCH = 0x80
    RETRACT_LIMIT_SWITCH = 0x100
    ETHERCAT_PROBLEM = 0x200
    DDS_COMMAND_SOURCE = 0x400
    MOTION_TIMEOUT = 0x800
    DDS_CONNECTED = 0x1000
    DRIVE_FAULT = 0x2000
    SIMULINK_FAULT = 0x4000
    ENCODER_FAULT = 0x8000


class ErrorCode(enum.IntEnum):
    """Why a client-side controller model is in FAULT (spec §4.3 ``ErrorCode``)."""

    CONTROLLER_FAULT = 1
    CONNECTION_LOST = 2
    NO_CONFIG = 3


# -- generation D ------------------------------------------------------------------------------
class Header(NamedTuple):
    """Generation D header, 24 bytes (spec §3.2)."""

    frame_id: int
    counter: int
    tai_sec: int
    tai_nsec: int


class Command(NamedTuple):
    """Generation D command, 60 bytes, sent bare (spec §3.3)."""

    commander: int
    counter: int
    code: int
    param1: float = 0.0
    param2: float = 0.0
    param3: float = 0.0
    param4: float = 0.0
    param5: float = 0.0
    param6: float = 0.0


class CommandStatus(NamedTuple):
    """Payload after ``Header(frame_id=1)``, 62 bytes (spec §3.4)."""

    status: int
    duration: float
    reason: str


HEADER = Layout(
    "Header",
    [("frame_id", "u32"), ("counter", "u32"), ("tai_sec", "i64"), ("tai_nsec", "i64")],
    size=24,
    record=Header,
)

_PARAMS: list[tuple[str, str]] = [(f"param{i}", "f64") for i in range(1, 7)]

COMMAND = Layout(
    "Command",
    [("commander", "u32"), ("counter", "u32"), ("code", "u32"), *_PARAMS],
    size=60,
    record=Command,
)

COMMAND_STATUS = Layout(
    "CommandStatus",
    [("status", "u32"), ("duration", "f64"), ("reason", f"char[{COMMAND_STATUS_REASON_LEN}]")],
    size=62,
    record=CommandStatus,
)


# -- generation A ------------------------------------------------------------------------------
class HeaderA24(NamedTuple):
    """Generation A header, layout A-24 (spec §5.2; v0.19-v0.22, TAI)."""

    sync_pattern: int
    frame_id: int
    counter: int
    tai_sec: int
    tai_nsec: int


class HeaderA36(NamedTuple):
    """Generation A header, layout A-36 (spec §5.2; v0.1-v0.18, UTC plus MJD)."""

    sync_pattern: int
    frame_id: int
    counter: int
    mjd: int
    mjd_frac: float
    tai_sec: int
    tai_nsec: int


class CommandA(NamedTuple):
    """Generation A command, 58 bytes (spec §5.3)."""

    sync_pattern: int
    counter: int
    code: int
    param1: float = 0.0
    param2: float = 0.0
    param3: float = 0.0
    param4: float = 0.0
    param5: float = 0.0
    param6: float = 0.0


HEADER_A24 = Layout(
    "HeaderA24",
    [("sync_pattern", "u16"), ("frame_id", "u16"), ("counter", "u32"), ("tai_sec", "i64"),
     ("tai_nsec", "i64")],
    size=24,
    record=HeaderA24,
)

# Field names tv_sec/tv_nsec in the original; kept as tai_* so both headers read alike.
HEADER_A36 = Layout(
    "HeaderA36",
    [("sync_pattern", "u16"), ("frame_id", "u16"), ("counter", "u32"), ("mjd", "i32"),
     ("mjd_frac", "f64"), ("tai_sec", "i64"), ("tai_nsec", "i64")],
    size=36,
    record=HeaderA36,
)

COMMAND_A = Layout(
    "CommandA",
    [("sync_pattern", "u16"), ("counter", "u32"), ("code", "u32"), *_PARAMS],
    size=58,
    record=CommandA,
)
