"""Which EPICS records a device gets, and how values and writes cross (no EPICS code here).

Names are ``<prefix>:<device>:<field>`` (ADR 0152); this module deals in the part after the
prefix, the *suffix* ``<device>:<field>``. Record types are what EPICS users expect of each
instrument:

================  ===========================================================================
device            records (suffix after ``<device>:``)
================  ===========================================================================
valve bank        ``<valve>`` bo Closed/Open (write = open/close), ``<valve>_RBV`` bi,
                  ``<valve>_LOCK`` bi Unlocked/Locked, ``<valve>_OWNER`` stringin
gauge controller  ``<gauge>`` ai, EGU Torr, PREC, HIGH/HIHI alarm limits
furnace           ``SETPOINT`` ao, ``SETPOINT_RBV`` / ``TEMPERATURE`` / ``OUTPUT`` ai,
                  ``TRIPPED`` bi (watchdog)
laser             ``POWER`` ao (percent), ``POWER_RBV`` ai, ``ENABLE`` bo, ``ENABLE_RBV`` bi
mass spectrometer ``<detector>`` ai (volts) per detector, ``SCANS`` longin,
                  ``INTEGRATION_TIME`` / ``MAGNET_DAC`` ao with ``_RBV`` ai
camera            ``IMAGE`` NTNDArray (pvAccess), ``FRAMES`` longin, ``ACQUIRE`` bo,
                  ``EXPOSURE`` ao (ms)
stage             ``POSITION`` ao, ``POSITION_RBV`` ai, ``MOVING`` bi
rotator (mock)    ``STATE`` / ``SUBSTATE`` mbbi (controller enums), ``POSITION`` /
                  ``VELOCITY`` ai
================  ===========================================================================

Every device with a writable record also gets ``LAST_ERROR`` (a long string): the reason of
the last refused write (ADR 0151).

A :class:`Binding` is the face's whole knowledge of one device: :meth:`Binding.records`,
:meth:`Binding.state` (every record's current value, read from the device),
:meth:`Binding.updates` (the record values one change event moves) and
:meth:`Binding.write` (the device method a write calls; returns None or the refusal reason).
Writes call exactly the methods the other links call, so the device's locks, interlocks and
checks apply unchanged; the face adds no device logic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labbridge.access import Role
from labbridge.devices.base import Change, Device
from labbridge.devices.camera import Camera
from labbridge.devices.furnace import Furnace
from labbridge.devices.gauges import GaugeController
from labbridge.devices.hexrot.mock import (
    BaseMockController,
    RotatorMockController,
    SimpleMockController,
)
from labbridge.devices.laser import Laser, LaserError
from labbridge.devices.spectrometer import Spectrometer, SpectrometerError
from labbridge.devices.stage import Stage
from labbridge.devices.valves import Outcome, ValveBank
from labbridge.protocol.hexrotcomm.structs import ControllerState, EnabledSubstate

#: Characters EPICS allows in a record name (Application Developer's Guide, "Record Name").
_PV_CHARS = re.compile(r"[^A-Za-z0-9_\-+:\[\]<>;.]")
#: Longest record name EPICS base accepts (PVNAME_STRINGSZ - 1).
MAX_PV_NAME = 60
#: Longest reason kept in LAST_ERROR and in a pvAccess error message.
MAX_REASON = 250

ZNAM_ONAM = {"valve": ("Closed", "Open"), "lock": ("Unlocked", "Locked"),
             "onoff": ("Off", "On"), "moving": ("Done", "Moving"),
             "tripped": ("OK", "Tripped"), "acquire": ("Idle", "Acquire")}

#: Default alarm limits (torr) by gauge type: MINOR above HIGH, MAJOR above HIHI.
GAUGE_ALARMS = {"ion": (1e-6, 1e-5), "convectron": (1.0, 10.0)}


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """One record: its suffix, type, static EPICS fields and whether clients may write it.

    ``rtype`` is one of ai, ao, bi, bo, mbbi, longin, stringin, long_stringin, ndarray
    (an NTNDArray served over pvAccess only). ``lock`` names a bi record (by suffix): while it
    reads 1, EPICS access security gives the record no write access (ADR 0151). ``needs`` is
    the role a client's write needs (ADR 0154): every record of the face actuates or sets a
    setpoint (operator); a lock or configuration record would say admin.
    """

    suffix: str
    rtype: str
    fields: dict[str, Any] = field(default_factory=dict)
    writable: bool = False
    lock: str | None = None
    doc: str = ""
    needs: Role = Role.OPERATOR


def pv_part(name: str) -> str:
    """A device or channel name as a record-name part (characters EPICS refuses become _)."""
    return _PV_CHARS.sub("_", name)


def _finite(value: Any) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{value!r} is not a finite number")
    return v


def _num(value: Any) -> float:
    """A reading as a float for an ai record (None and junk become NaN: UDF, INVALID)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Binding:
    """Records of one device and the way values and writes cross (subclassed per kind)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.dev = pv_part(device.name)

    def s(self, fieldname: str) -> str:
        """Suffix of one of this device's records."""
        return f"{self.dev}:{fieldname}"

    def records(self) -> list[RecordSpec]:
        specs = self._records()
        if any(r.writable for r in specs):
            specs.append(RecordSpec(self.s("LAST_ERROR"), "long_stringin",
                                    doc="reason of the last refused write"))
        return specs

    def _records(self) -> list[RecordSpec]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Current value of every record except LAST_ERROR, read from the device."""
        raise NotImplementedError

    def updates(self, change: Change) -> dict[str, Any]:
        """Record values moved by one change event (default: all of :meth:`state`)."""
        return self.state()

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        """Apply a client's write through the device; None when done, else why not.

        ``requester`` is the client's address, as other links pass theirs (the valve bank's
        owner check compares it)."""
        return f"{suffix} is read-only"

    # Devices that only produce data when read (the spectrometer's integrations) tell the
    # face when the next reading is due; see ADR 0150.
    def next_sample_in(self) -> float | None:
        return None

    def sample(self) -> None:
        """Read what is due now (the device emits changes as it would for any reader)."""


# -- valves ---------------------------------------------------------------------------------
class ValveBinding(Binding):
    device: ValveBank

    def __init__(self, device: ValveBank) -> None:
        super().__init__(device)
        self.parts = {n: pv_part(n) for n in device.names}
        if len(set(self.parts.values())) != len(self.parts):
            raise ValueError(f"valve names of {device.name} collide once made PV-safe: "
                             f"{sorted(self.parts)}")
        self._by_suffix = {self.s(p): n for n, p in self.parts.items()}

    def _records(self) -> list[RecordSpec]:
        out: list[RecordSpec] = []
        zo = ZNAM_ONAM["valve"]
        lk = ZNAM_ONAM["lock"]
        for name, p in self.parts.items():
            desc = self.device.config(name).description[:40]
            out += [
                RecordSpec(self.s(p), "bo", {"ZNAM": zo[0], "ONAM": zo[1], "DESC": desc},
                           writable=True, lock=self.s(f"{p}_LOCK"),
                           doc=f"valve {name}: write 1 to open, 0 to close"),
                RecordSpec(self.s(f"{p}_RBV"), "bi", {"ZNAM": zo[0], "ONAM": zo[1],
                                                       "DESC": desc}),
                RecordSpec(self.s(f"{p}_LOCK"), "bi", {"ZNAM": lk[0], "ONAM": lk[1],
                                                        "OSV": "MINOR"}),
                RecordSpec(self.s(f"{p}_OWNER"), "stringin"),
            ]
        return out

    def _values(self, name: str, v: dict[str, Any]) -> dict[str, Any]:
        p = self.parts[name]
        state = int(bool(v.get("state")))
        return {self.s(p): state, self.s(f"{p}_RBV"): state,
                self.s(f"{p}_LOCK"): int(bool(v.get("locked"))),
                self.s(f"{p}_OWNER"): str(v.get("owner") or "")[:39]}

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, v in self.device.snapshot().items():
            out.update(self._values(name, v))
        return out

    def updates(self, change: Change) -> dict[str, Any]:
        if change.signal in self.parts and isinstance(change.value, dict):
            return self._values(change.signal, change.value)
        return {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        name = self._by_suffix.get(suffix)
        if name is None:
            return f"{suffix} is read-only"
        target = bool(int(value))
        bank = self.device
        res = await (bank.open(name, requester) if target else bank.close(name, requester))
        if res.outcome is Outcome.ACTUATED:
            return None
        why = res.reason or res.outcome.value
        return f"{res.action} {name} refused: {why}"


# -- gauges ---------------------------------------------------------------------------------
class GaugeBinding(Binding):
    device: GaugeController

    def __init__(self, device: GaugeController,
                 alarms: dict[str, tuple[float, float]] | None = None) -> None:
        super().__init__(device)
        self.parts = {g: pv_part(g) for g in device.gauges}
        self.alarms = alarms or {}

    def _records(self) -> list[RecordSpec]:
        out = []
        for g, p in self.parts.items():
            kind = "ion" if g.upper().startswith("IG") else "convectron"
            high, hihi = self.alarms.get(g, GAUGE_ALARMS[kind])
            out.append(RecordSpec(self.s(p), "ai", {
                "EGU": "Torr", "PREC": 3, "LOPR": 0.0, "HOPR": hihi * 10,
                "HIGH": high, "HIHI": hihi, "HSV": "MINOR", "HHSV": "MAJOR",
                "DESC": f"{kind} gauge {g}"[:40]}, doc=f"pressure of gauge {g}"))
        return out

    def state(self) -> dict[str, Any]:
        return {self.s(p): _num(self.device.last(g)) for g, p in self.parts.items()}

    def updates(self, change: Change) -> dict[str, Any]:
        p = self.parts.get(change.signal)
        return {} if p is None else {self.s(p): _num(change.value)}


# -- furnace --------------------------------------------------------------------------------
class FurnaceBinding(Binding):
    device: Furnace

    def _records(self) -> list[RecordSpec]:
        tmax = self.device.model.params.max_temperature
        t = {"EGU": "C", "PREC": 1, "LOPR": 0.0, "HOPR": tmax}
        tt = ZNAM_ONAM["tripped"]
        return [
            RecordSpec(self.s("SETPOINT"), "ao", dict(t), writable=True,
                       doc="furnace setpoint (C)"),
            RecordSpec(self.s("SETPOINT_RBV"), "ai", dict(t)),
            RecordSpec(self.s("TEMPERATURE"), "ai", {**t, "PREC": 2, "HIHI": tmax,
                                                    "HHSV": "MAJOR"}),
            RecordSpec(self.s("OUTPUT"), "ai", {"EGU": "%", "PREC": 1, "LOPR": 0.0,
                                               "HOPR": 100.0}),
            RecordSpec(self.s("TRIPPED"), "bi", {"ZNAM": tt[0], "ONAM": tt[1],
                                                "OSV": "MAJOR"}),
        ]

    def state(self) -> dict[str, Any]:
        d = self.device
        return {self.s("SETPOINT"): d.setpoint, self.s("SETPOINT_RBV"): d.setpoint,
                self.s("TEMPERATURE"): d.temperature, self.s("OUTPUT"): d.percent_output,
                self.s("TRIPPED"): int(d.tripped)}

    def updates(self, change: Change) -> dict[str, Any]:
        sig, v = change.signal, change.value
        if sig == "temperature":
            return {self.s("TEMPERATURE"): _num(v)}
        if sig == "output":
            return {self.s("OUTPUT"): _num(v)}
        if sig in ("setpoint", "watchdog"):
            return self.state()
        return {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        if suffix != self.s("SETPOINT"):
            return f"{suffix} is read-only"
        # A client spoke to the furnace: the same watchdog re-arm every command set does.
        self.device.heard()
        try:
            self.device.set_setpoint(_finite(value))
        except ValueError as exc:
            return f"setpoint refused: {exc}"
        return None


# -- laser ----------------------------------------------------------------------------------
class LaserBinding(Binding):
    device: Laser

    def _records(self) -> list[RecordSpec]:
        oo = ZNAM_ONAM["onoff"]
        p = {"EGU": "%", "PREC": 2, "LOPR": 0.0, "HOPR": 100.0}
        return [
            RecordSpec(self.s("POWER"), "ao", dict(p), writable=True,
                       doc="requested laser power (percent of full power)"),
            RecordSpec(self.s("POWER_RBV"), "ai", dict(p)),
            RecordSpec(self.s("ENABLE"), "bo", {"ZNAM": oo[0], "ONAM": oo[1]},
                       writable=True, doc="1 enables the laser (waits for warm-up)"),
            RecordSpec(self.s("ENABLE_RBV"), "bi", {"ZNAM": oo[0], "ONAM": oo[1]}),
        ]

    def state(self) -> dict[str, Any]:
        d = self.device
        return {self.s("POWER"): d.requested_power, self.s("POWER_RBV"): d.requested_power,
                self.s("ENABLE"): int(d.enabled), self.s("ENABLE_RBV"): int(d.enabled)}

    def updates(self, change: Change) -> dict[str, Any]:
        return self.state() if change.signal in ("power_setpoint", "enabled") else {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        try:
            if suffix == self.s("POWER"):
                self.device.set_power(_finite(value))
            elif suffix == self.s("ENABLE"):
                if int(value):
                    await self.device.enable()
                else:
                    self.device.disable()
            else:
                return f"{suffix} is read-only"
        except LaserError as exc:
            return f"laser refused: {exc.detail} (code {exc.code})"
        except ValueError as exc:
            return f"laser refused: {exc}"
        return None


# -- mass spectrometer ----------------------------------------------------------------------
class SpectrometerBinding(Binding):
    device: Spectrometer

    def __init__(self, device: Spectrometer) -> None:
        super().__init__(device)
        self.parts = {d: pv_part(d) for d in device.detectors}

    def _records(self) -> list[RecordSpec]:
        out = [RecordSpec(self.s(p), "ai", {"EGU": "V", "PREC": 6,
                                            "DESC": f"detector {d}"[:40]},
                          doc=f"intensity on detector {d}, one value per integration")
               for d, p in self.parts.items()]
        out += [
            RecordSpec(self.s("SCANS"), "longin"),
            RecordSpec(self.s("INTEGRATION_TIME"), "ao", {"EGU": "s", "PREC": 4},
                       writable=True),
            RecordSpec(self.s("INTEGRATION_TIME_RBV"), "ai", {"EGU": "s", "PREC": 4}),
            RecordSpec(self.s("MAGNET_DAC"), "ao", {"PREC": 5, "LOPR": 0.0, "HOPR": 10.0},
                       writable=True),
            RecordSpec(self.s("MAGNET_DAC_RBV"), "ai", {"PREC": 5, "LOPR": 0.0,
                                                       "HOPR": 10.0}),
        ]
        return out

    def state(self) -> dict[str, Any]:
        d = self.device
        out: dict[str, Any] = {self.s(p): _num(d.last_scan.get(det, math.nan))
                               for det, p in self.parts.items()}
        out[self.s("SCANS")] = d.scans
        out[self.s("INTEGRATION_TIME")] = out[self.s("INTEGRATION_TIME_RBV")] = \
            d.integration_time
        out[self.s("MAGNET_DAC")] = out[self.s("MAGNET_DAC_RBV")] = d.magnet_target
        return out

    def updates(self, change: Change) -> dict[str, Any]:
        if change.signal == "scan" and isinstance(change.value, dict):
            out = {self.s(p): _num(change.value.get(det)) for det, p in self.parts.items()}
            out[self.s("SCANS")] = self.device.scans
            return out
        if change.signal in ("integration_time", "magnet_dac"):
            return self.state()
        return {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        try:
            if suffix == self.s("INTEGRATION_TIME"):
                self.device.set_integration_time(_finite(value))
            elif suffix == self.s("MAGNET_DAC"):
                self.device.set_magnet_dac(_finite(value))
            else:
                return f"{suffix} is read-only"
        except (SpectrometerError, ValueError) as exc:
            return str(exc)
        return None

    def next_sample_in(self) -> float | None:
        d = self.device
        return max(0.0, d.next_scan_at() - d.clock())

    def sample(self) -> None:
        self.device.data()


# -- camera ---------------------------------------------------------------------------------
class CameraBinding(Binding):
    device: Camera

    def _records(self) -> list[RecordSpec]:
        aq = ZNAM_ONAM["acquire"]
        return [
            RecordSpec(self.s("IMAGE"), "ndarray", doc="last frame (NTNDArray, pvAccess)"),
            RecordSpec(self.s("FRAMES"), "longin"),
            RecordSpec(self.s("ACQUIRE"), "bo", {"ZNAM": aq[0], "ONAM": aq[1]},
                       writable=True, doc="write 1 to grab one frame"),
            RecordSpec(self.s("EXPOSURE"), "ao", {"EGU": "ms", "PREC": 2}, writable=True),
        ]

    def _frame(self) -> np.ndarray | None:
        return self.device.last_frame

    def state(self) -> dict[str, Any]:
        d = self.device
        return {self.s("IMAGE"): self._frame(), self.s("FRAMES"): d.frames,
                self.s("ACQUIRE"): 0, self.s("EXPOSURE"): d.exposure_ms}

    def updates(self, change: Change) -> dict[str, Any]:
        if change.signal == "frames":
            return {self.s("IMAGE"): self._frame(), self.s("FRAMES"): self.device.frames}
        if change.signal == "exposure_ms":
            return {self.s("EXPOSURE"): self.device.exposure_ms}
        return {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        if suffix == self.s("ACQUIRE"):
            if int(value):
                await self.device.grab()
            return None
        if suffix == self.s("EXPOSURE"):
            try:
                self.device.set_setting("exposure_ms", str(_finite(value)))
            except ValueError as exc:
                return f"exposure refused: {exc}"
            return None
        return f"{suffix} is read-only"


# -- stage ----------------------------------------------------------------------------------
class StageBinding(Binding):
    device: Stage

    def _records(self) -> list[RecordSpec]:
        d = self.device
        f: dict[str, Any] = {"EGU": d.units[:15], "PREC": 4}
        if math.isfinite(d.minimum) and math.isfinite(d.maximum):
            f.update(LOPR=d.minimum, HOPR=d.maximum)
        mv = ZNAM_ONAM["moving"]
        return [
            RecordSpec(self.s("POSITION"), "ao", dict(f), writable=True,
                       doc="absolute move; the write completes when the stage stops"),
            RecordSpec(self.s("POSITION_RBV"), "ai", dict(f)),
            RecordSpec(self.s("MOVING"), "bi", {"ZNAM": mv[0], "ONAM": mv[1]}),
        ]

    def state(self) -> dict[str, Any]:
        pos = _num(self.device.position)
        return {self.s("POSITION"): pos, self.s("POSITION_RBV"): pos, self.s("MOVING"): 0}

    def updates(self, change: Change) -> dict[str, Any]:
        if change.signal == "position":
            return {self.s("POSITION_RBV"): _num(change.value)}
        if change.signal == "moving":
            return {self.s("MOVING"): int(bool(change.value))}
        return {}

    async def write(self, suffix: str, value: Any, requester: str | None) -> str | None:
        if suffix != self.s("POSITION"):
            return f"{suffix} is read-only"
        try:
            await self.device.move_abs(_finite(value))
        except ValueError as exc:
            return f"move refused: {exc}"
        return None


# -- rotator (hexrotcomm mock controller) ---------------------------------------------------
def _mbb(enum_type: type[Any]) -> dict[str, Any]:
    prefixes = ["ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV",
                "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF"]
    out: dict[str, Any] = {}
    for member in enum_type:
        p = prefixes[int(member.value)]
        out[p + "ST"] = member.name[:25]
        out[p + "VL"] = int(member.value)
    return out


class RotatorBinding(Binding):
    device: BaseMockController

    def _records(self) -> list[RecordSpec]:
        fault = _mbb(ControllerState)
        fault["FRSV"] = "MAJOR"  # FAULT = 4 -> FR
        return [
            RecordSpec(self.s("STATE"), "mbbi", fault),
            RecordSpec(self.s("SUBSTATE"), "mbbi", _mbb(EnabledSubstate)),
            RecordSpec(self.s("POSITION"), "ai", {"EGU": "deg", "PREC": 4}),
            RecordSpec(self.s("VELOCITY"), "ai", {"EGU": "deg/s", "PREC": 4}),
        ]

    def state(self) -> dict[str, Any]:
        d = self.device
        pos = d.telemetry.get(d.spec.position_field)
        vel = d.velocity if isinstance(d, RotatorMockController) else 0.0
        return {self.s("STATE"): int(d.state), self.s("SUBSTATE"): d.enabled_substate,
                self.s("POSITION"): _num(pos), self.s("VELOCITY"): _num(vel)}


#: Device classes the face knows, most specific first.
BINDINGS: list[tuple[type[Device], Callable[[Any], Binding]]] = [
    (ValveBank, ValveBinding),
    (GaugeController, GaugeBinding),
    (Furnace, FurnaceBinding),
    (Laser, LaserBinding),
    (Spectrometer, SpectrometerBinding),
    (Camera, CameraBinding),
    (Stage, StageBinding),
    # Scalar-position controllers only: a hexapod's pose has six axes (not served yet).
    (RotatorMockController, RotatorBinding),
    (SimpleMockController, RotatorBinding),
]


def binding_for(device: Device) -> Binding | None:
    """The binding of a device, or None for a kind the EPICS face does not serve."""
    for cls, make in BINDINGS:
        if isinstance(device, cls):
            return make(device)
    return None


def check_names(prefix: str, specs: list[RecordSpec]) -> None:
    """Every full record name is valid, short enough and unique; ValueError says which not."""
    if not prefix or _PV_CHARS.search(prefix):
        raise ValueError(f"prefix {prefix!r}: use letters, digits and _-+:[]<>;. only")
    seen: set[str] = set()
    for r in specs:
        name = f"{prefix}:{r.suffix}"
        if len(name) > MAX_PV_NAME:
            raise ValueError(f"record name {name!r} is longer than {MAX_PV_NAME} characters")
        if name in seen:
            raise ValueError(f"two records would be named {name!r}")
        seen.add(name)
