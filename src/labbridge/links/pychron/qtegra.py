"""A Qtegra RemoteControlServer-compatible server (spec pychron.md section 12).

Wire behaviour, as Thermo's ``RemoteControlServer.cs`` has it:

* plain text, no length prefix; the request is trimmed and split on spaces (``\\r``/``\\r\\n``
  are harmless); the reply is UTF-8 with **no terminator**;
* TCP: one request per connection, reply, close; UDP: one datagram each way (Pychron's
  default). The real server takes one TCP client at a time; labbridge serves them
  concurrently (a slow setter holds only its own client), which no real client can tell apart;
* replies: ``OK`` for success, values as text, ``True``/``False`` for booleans, and Qtegra's
  own error forms ``Error: Invalid Command`` (unknown command, or arguments it cannot read)
  and ``Error: could not set <hw> to <v>`` (a setter refused its value).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from labbridge.access import DONE, FAILED, AccessDenied, Action, Gate, Principal, Role
from labbridge.devices.spectrometer import Spectrometer, SpectrometerError
from labbridge.links.pychron.textserver import OneShotTextServer
from labbridge.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

INVALID: Final = "Error: Invalid Command"
OK: Final = "OK"


class QtegraInvalid(Exception):
    """The request cannot be read: answered ``Error: Invalid Command``."""


def fmt(value: object) -> str:
    """Values as .NET ``ToString()`` prints them, near enough for Pychron's ``float()``."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _float(text: str, hardware: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpectrometerError(hardware, text) from None
    if not math.isfinite(value):
        raise SpectrometerError(hardware, text)
    return value


def _bool_arg(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "on", "yes"):
        return True
    if t in ("false", "0", "off", "no"):
        return False
    raise QtegraInvalid(text)


Handler = Callable[[list[str]], "str | Awaitable[str]"]


class QtegraCommands:
    """``ParseAndExecute``: command name -> handler over one :class:`Spectrometer`."""

    def __init__(self, spec: Spectrometer, gate: Gate | None = None) -> None:
        self.spec = spec
        #: The node's access gate: ``Get...`` commands need ``observer``, every other
        #: command changes the spectrometer and needs ``operator``.
        self.gate = gate if gate is not None else Gate()
        s = spec
        self.table: dict[str, Handler] = {
            "GetData": self._get_data,
            "GetIntegrationTime": lambda a: fmt(s.integration_time),
            "SetIntegrationTime": lambda a: self._set(
                s.set_integration_time, _float(self._one(a), "IntegrationTime")),
            "GetMagnetDAC": lambda a: fmt(s.magnet_dac),
            "SetMagnetDAC": lambda a: self._set(s.set_magnet_dac,
                                                _float(self._one(a), "MagnetDAC")),
            "GetMagnetMoving": lambda a: fmt(s.magnet_moving),
            "BlankBeam": lambda a: self._set(s.blank_beam, _bool_arg(self._one(a))),
            "ProtectDetector": self._protect,
            "GetDeflection": lambda a: fmt(s.deflections[self._det(self._one(a))]),
            "SetDeflection": self._set_deflection,
            "GetDeflections": self._get_deflections,
            "GetGain": lambda a: fmt(s.gains[self._det(self._one(a))]),
            "SetGain": self._set_gain,
            "GetParameter": self._get_parameter,
            "SetParameter": self._set_parameter,
            "GetHighVoltage": lambda a: fmt(s.high_voltage),
            "GetHV": lambda a: fmt(s.parameters["Acceleration Reference Set"]),
            "SetHighVoltage": self._set_hv,
            "SetHV": self._set_hv,
            "ActivateCupConfiguration": self._activate_cup,
            "GetCupConfigurationList": lambda a: "\r".join(s.cup_configurations),
            "GetSubCupConfigurationList": self._sub_cups,
            "GetActiveCupConfiguration": lambda a: s.active_cup[0],
            "Open": lambda a: self._valve(a, True),
            "Close": lambda a: self._valve(a, False),
            "GetValveState": self._valve_state,
            "SetMass": lambda a: self._set(self._set_mass, _float(self._one(a), "Mass")),
        }

    # -- parsing ------------------------------------------------------------------------------
    @staticmethod
    def _one(args: list[str]) -> str:
        if len(args) != 1 or not args[0]:
            raise QtegraInvalid(" ".join(args))
        return args[0]

    @staticmethod
    def _pair(args: list[str]) -> tuple[str, str]:
        parts = " ".join(args).split(",")
        if len(parts) != 2 or not parts[0].strip():
            raise QtegraInvalid(" ".join(args))
        return parts[0].strip(), parts[1].strip()

    def _det(self, name: str) -> str:
        if name not in self.spec.detectors:
            raise QtegraInvalid(name)
        return name

    @staticmethod
    def _set(fn: Callable[[Any], None], value: Any) -> str:
        fn(value)
        return OK

    def handle(self, text: str, principal: Principal | None = None) -> str | Awaitable[str]:
        """Reply to one request; never raises. ``principal`` defaults to a local caller."""
        words = text.strip().split(" ")
        fn = self.table.get(words[0])
        if fn is None:
            return INVALID
        who = principal if principal is not None else Principal("local", "qtegra", "local")
        action = Action(Role.OBSERVER if words[0].startswith("Get") else Role.OPERATOR,
                        words[0], " ".join(words[1:])[:200])
        try:
            self.gate.check(who, action)
        except AccessDenied as exc:
            # Qtegra's own error form; the real server has no access control at all.
            return f"Error: access denied: {exc.reason}"
        try:
            result = fn(words[1:])
        except SpectrometerError as exc:
            return self._audit(who, action, f"Error: {exc}")
        except (QtegraInvalid, KeyError, ValueError, IndexError):
            return self._audit(who, action, INVALID)
        if isinstance(result, str):
            return self._audit(who, action, result)
        return self._finish(result, who, action)

    async def _finish(self, awaitable: Awaitable[str], who: Principal, action: Action) -> str:
        try:
            reply = await awaitable
        except SpectrometerError as exc:
            reply = f"Error: {exc}"
        except (QtegraInvalid, KeyError, ValueError, IndexError):
            reply = INVALID
        return self._audit(who, action, reply)

    def _audit(self, who: Principal, action: Action, reply: str) -> str:
        if action.changes_state:
            failed = reply.startswith("Error")
            self.gate.record(who, action, FAILED if failed else DONE, reply if failed else "")
        return reply

    # -- handlers -------------------------------------------------------------------------------
    def _get_data(self, args: list[str]) -> str:
        scan = self.spec.data()
        return ",".join(f"{det},{fmt(v)}" for det, v in scan.items())

    def _protect(self, args: list[str]) -> str:
        det, state = self._pair(args)
        self.spec.protect(self._det(det), _bool_arg(state))
        return OK

    def _set_deflection(self, args: list[str]) -> str:
        det, value = self._pair(args)
        self.spec.set_deflection(self._det(det), _float(value, f"{det} Deflection"))
        return OK

    def _get_deflections(self, args: list[str]) -> str:
        dets = [d.strip() for d in " ".join(args).split(",") if d.strip()]
        if not dets:
            raise QtegraInvalid("")
        return ",".join(fmt(self.spec.deflections[self._det(d)]) for d in dets)

    def _set_gain(self, args: list[str]) -> str:
        det, value = self._pair(args)
        self.spec.set_gain(self._det(det), _float(value, f"{det} Gain"))
        return OK  # spec 12: "OK (always)" for a readable request

    def _get_parameter(self, args: list[str]) -> str:
        name = " ".join(args).strip()
        if name not in self.spec.parameters:
            raise QtegraInvalid(name)
        return fmt(self.spec.parameter(name))

    def _set_parameter(self, args: list[str]) -> str:
        name, value = self._pair(args)
        self.spec.set_parameter(name, _float(value, name))
        return OK

    async def _set_hv(self, args: list[str]) -> str:
        await self.spec.set_high_voltage(_float(self._one(args), "HighVoltage"))
        return OK

    def _activate_cup(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] not in self.spec.cup_configurations \
                or args[1] not in self.spec.cup_configurations[args[0]]:
            raise QtegraInvalid(" ".join(args))
        self.spec.active_cup = (args[0], args[1])
        return OK

    def _sub_cups(self, args: list[str]) -> str:
        name = " ".join(args).strip() or self.spec.active_cup[0]
        if name not in self.spec.cup_configurations:
            raise QtegraInvalid(name)
        return "\r".join(self.spec.cup_configurations[name])

    def _valve(self, args: list[str], open_: bool) -> str:
        self.spec.set_valve(" ".join(args).strip(), open_)
        return OK

    def _valve_state(self, args: list[str]) -> str:
        name = " ".join(args).strip()
        if name not in self.spec.valves:
            return "Error"  # spec 12: the real reply for an unknown valve
        return fmt(self.spec.valves[name])

    def _set_mass(self, value: float) -> None:
        if value <= 0:
            raise SpectrometerError("Mass", value)
        self.spec.mass = value


class QtegraServer:
    """Service: RemoteControlServer on TCP (one request per connection) and UDP."""

    def __init__(self, spectrometer: Spectrometer, host: str = "127.0.0.1", port: int = 1069,
                 *, udp: bool = True, udp_port: int | None = None,
                 name: str = "qtegra", quiet_gap: float = 0.05,
                 gate: Gate | None = None) -> None:
        self.name = name
        self.commands = QtegraCommands(spectrometer, gate)
        self.spectrometer = spectrometer
        self._server = OneShotTextServer(
            self._handle, host, port, udp=udp, udp_port=udp_port, name=name,
            purpose="Qtegra RemoteControlServer", quiet_gap=quiet_gap,
            max_request=1024 * 16, oversize_reply=INVALID.encode(),
            failure_reply=INVALID.encode())

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def udp_port(self) -> int | None:
        return self._server.udp_port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def endpoints(self) -> list[Endpoint]:
        return self._server.endpoints()

    def _handle(self, text: str, peer: str, udp: bool) -> bytes | Awaitable[bytes]:
        reply = self.commands.handle(text, Principal(peer, self.name, "udp" if udp else "tcp"))
        if isinstance(reply, str):
            if reply == INVALID:
                log.info("%s: invalid command from %s: %r", self.name, peer, text[:80])
            return reply.encode("utf-8")
        return self._encode(reply)

    @staticmethod
    async def _encode(reply: Awaitable[str]) -> bytes:
        return (await reply).encode("utf-8")
