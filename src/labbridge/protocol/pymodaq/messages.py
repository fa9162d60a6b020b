"""Typed PyMoDAQ TCP/IP messages, shared by both generations (spec pymodaq.md §4, §6).

Each class is one command name on the wire plus its payload. The wire names live in exactly
one place: the ``COMMAND`` class variable (or :class:`SendData` / :class:`GetPosition` fields
whose values are the names). A codec turns these into G1 fields or G3 objects.

Client -> server: :class:`Hello` (client type), :class:`Infos`, :class:`InfoXml`, :class:`Info`,
:class:`Done`, :class:`PositionIs`, :class:`MoveDone`, :class:`AxisInfo` (G1 only),
:class:`Quit`. Server -> client: :class:`MoveAbs`, :class:`MoveRel`, :class:`MoveHome`,
:class:`GetPosition`, :class:`StopMotion`, :class:`SendData`, :class:`SetInfo`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np

from labbridge.protocol.pymodaq.objects import DataToExport, DataWithAxes


class Generation(enum.Enum):
    """Wire generation (§1). G2 is only detected, to be refused."""

    G1 = "g1"
    G3 = "g3"


class Dialect(enum.Enum):
    """G1 dialect (§3.5): 1.6 = G1a (seed, untagged lists, Nrow/Ncol arrays), 2.1 = G1b."""

    G1A = "1.6"
    G1B = "2.1"


class ClientType(enum.Enum):
    """The identification a client sends first (§4.1)."""

    GRABBER = "GRABBER"
    ACTUATOR = "ACTUATOR"


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of a connection: the client type."""

    client_type: ClientType


@dataclass(frozen=True, slots=True)
class Infos:
    """``Infos``: the client's whole settings tree as XML (§4.1, §6 handshake)."""

    COMMAND: ClassVar[str] = "Infos"
    xml: str


@dataclass(frozen=True, slots=True)
class InfoXml:
    """``Info_xml``: one setting changed on the client (path, XML)."""

    COMMAND: ClassVar[str] = "Info_xml"
    path: tuple[str, ...]
    xml: str


@dataclass(frozen=True, slots=True)
class Info:
    """``Info``: a named value (G1a: a big-endian double, G1b/G3: a string; §3.4)."""

    COMMAND: ClassVar[str] = "Info"
    name: str
    value: str | float


@dataclass(frozen=True, slots=True)
class Quit:
    """``Quit``: the client leaves."""

    COMMAND: ClassVar[str] = "Quit"


@dataclass(frozen=True, slots=True, eq=False)
class Done:
    """``Done``: detector data. G1 carries a list of arrays, G3 a DataToExport (§4.3, §6)."""

    COMMAND: ClassVar[str] = "Done"
    arrays: tuple[np.ndarray, ...]
    dte: DataToExport | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Position:
    value: float
    units: str = ""
    #: The G3 DataActuator as received (None for G1 or when built locally).
    data: DataWithAxes | None = None
    #: Numpy dtype string of a G1 scalar (``<f8``); None means the default for ``value``.
    dtype: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class PositionIs(_Position):
    """``position_is`` + position: reply to a position query."""

    COMMAND: ClassVar[str] = "position_is"


@dataclass(frozen=True, slots=True, eq=False)
class MoveDone(_Position):
    """``move_done`` + final position: reply to move_abs / move_rel / move_home."""

    COMMAND: ClassVar[str] = "move_done"


@dataclass(frozen=True, slots=True, eq=False)
class AxisInfo:
    """``x_axis`` / ``y_axis`` (G1 only, from 2.0): data, label, units (§4.3)."""

    axis: str  # "x" or "y"
    data: np.ndarray
    label: str = ""
    units: str = ""

    @property
    def command(self) -> str:
        return f"{self.axis}_axis"


@dataclass(frozen=True, slots=True, eq=False)
class MoveAbs(_Position):
    """``move_abs`` + target."""

    COMMAND: ClassVar[str] = "move_abs"


@dataclass(frozen=True, slots=True, eq=False)
class MoveRel(_Position):
    """``move_rel`` + increment."""

    COMMAND: ClassVar[str] = "move_rel"


@dataclass(frozen=True, slots=True)
class MoveHome:
    COMMAND: ClassVar[str] = "move_home"


@dataclass(frozen=True, slots=True)
class StopMotion:
    COMMAND: ClassVar[str] = "stop_motion"


#: The two names of the position query (§4.2, §6; §9 #12: clients accept both).
POSITION_QUERIES: Final = ("check_position", "get_actuator_value")


@dataclass(frozen=True, slots=True)
class GetPosition:
    """Position query: ``check_position`` (G1 servers) or ``get_actuator_value`` (G3)."""

    command: str = "check_position"

    def __post_init__(self) -> None:
        if self.command not in POSITION_QUERIES:
            raise ValueError(f"not a position query: {self.command!r}")


#: Detector snapshot commands (§4.2).
SEND_DATA: Final = ("Send Data 0D", "Send Data 1D", "Send Data 2D", "Send Data ND")


@dataclass(frozen=True, slots=True)
class SendData:
    """``Send Data 0D`` / ``1D`` / ``2D`` / ``ND``: take one snapshot."""

    dim: str = "2D"

    def __post_init__(self) -> None:
        if self.command not in SEND_DATA:
            raise ValueError(f"not a data dimension: {self.dim!r}")

    @property
    def command(self) -> str:
        return f"Send Data {self.dim}"


@dataclass(frozen=True, slots=True)
class SetInfo:
    """``set_info``: relative parameter path and that parameter's XML (§4.2, §6)."""

    COMMAND: ClassVar[str] = "set_info"
    path: tuple[str, ...]
    xml: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A G3 command name outside the tables (framing is intact, so it can be logged and
    skipped; §4.3 'a command outside the list is logged and ignored')."""

    name: str
    payload: Any = None


def command_name(msg: object) -> str:
    """Wire command name of a message (the one place names come from)."""
    cmd = getattr(msg, "COMMAND", None)
    if isinstance(cmd, str):
        return cmd
    if isinstance(msg, GetPosition | SendData | AxisInfo):
        return msg.command
    if isinstance(msg, Hello):
        return msg.client_type.value
    raise TypeError(f"not a PyMoDAQ message: {msg!r}")


class Role(enum.Enum):
    """Which side a codec sits on: it decodes what the *other* side sends."""

    SERVER = "server"  # decodes client -> server messages, encodes server -> client
    CLIENT = "client"  # decodes server -> client messages, encodes client -> server
