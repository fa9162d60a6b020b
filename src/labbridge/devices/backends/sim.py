"""Simulated backends: in-memory outputs and a plausible vacuum.

They are ordinary backends (ARCHITECTURE.md principle 8): the same valve bank and gauge
controller run on them as on real hardware, and the node file picks one with
``backend: {kind: sim}``. Test hooks (fault injection, gates, stuck outputs) are plain methods
so tests never reach into private state.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping

from labbridge.devices.backends import BackendError, GaugeBackend, ValveBackend
from labbridge.devices.base import Change, Device


class SimValveBackend(ValveBackend):
    """In-memory outputs with an optional actuation delay and fault injection.

    ``readback`` chooses whether :meth:`read_output` reports levels (like a Modbus coil) or
    always None (like a relay board with no feedback). An output never written reads back as
    None unless ``initial`` gives it a level: a freshly booted simulator does not know where
    the valves are, so a state restored from the state file is not overwritten by a made-up
    "all closed" (docs/adr/0021).
    """

    kind = "sim"

    def __init__(self, *, delay: float = 0.0, readback: bool = True,
                 initial: Mapping[str, bool] | None = None) -> None:
        if delay < 0 or not math.isfinite(delay):
            raise ValueError(f"delay must be a finite number >= 0, got {delay!r}")
        self.delay = delay
        self.readback = readback
        self.outputs: dict[str, bool] = dict(initial or {})
        #: Every successful set_output, in order: (address, level).
        self.calls: list[tuple[str, bool]] = []
        #: Addresses whose set_output entered a gate (see :meth:`block`), in order.
        self.waiting: asyncio.Queue[str] = asyncio.Queue()
        self.started = False
        self._fail: dict[str, str] = {}
        self._fail_read: dict[str, str] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._stuck: dict[str, bool] = {}
        self._in_flight = 0
        #: Highest number of set_output calls seen running at the same time.
        self.max_in_flight = 0

    # -- test hooks ------------------------------------------------------------------------
    def fail_next(self, address: str, reason: str = "simulated hardware fault") -> None:
        """Make the next set_output on ``address`` raise BackendError(reason)."""
        self._fail[address] = reason

    def fail_next_read(self, address: str, reason: str = "simulated read fault") -> None:
        """Make the next read_output on ``address`` raise BackendError(reason)."""
        self._fail_read[address] = reason

    def block(self, address: str) -> asyncio.Event:
        """Hold every set_output on ``address`` until the returned event is set.

        Each held call puts ``address`` on :attr:`waiting` when it arrives, so a test can
        await the moment a call is inside the backend instead of sleeping.
        """
        gate = asyncio.Event()
        self._gates[address] = gate
        return gate

    def unblock(self, address: str) -> None:
        gate = self._gates.pop(address, None)
        if gate is not None:
            gate.set()

    def stick(self, address: str, level: bool | None) -> None:
        """Make ``address`` stuck at ``level`` (writes succeed but do nothing); None frees it."""
        if level is None:
            self._stuck.pop(address, None)
        else:
            self._stuck[address] = level
            self.outputs[address] = level

    def force(self, address: str, level: bool) -> None:
        """Change an output behind the bank's back (someone pressed a button)."""
        self.outputs[address] = level

    # -- backend ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def set_output(self, address: str, level: bool) -> None:
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            gate = self._gates.get(address)
            if gate is not None:
                self.waiting.put_nowait(address)
                await gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            reason = self._fail.pop(address, None)
            if reason is not None:
                raise BackendError(reason)
            self.calls.append((address, level))
            self.outputs[address] = self._stuck.get(address, level)
        finally:
            self._in_flight -= 1

    async def read_output(self, address: str) -> bool | None:
        reason = self._fail_read.pop(address, None)
        if reason is not None:
            raise BackendError(reason)
        if not self.readback:
            return None
        return self.outputs.get(address)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "delay": self.delay, "readback": self.readback}


#: Typical base pressures (torr) per gauge type: a hot-cathode ion gauge on a clean UHV
#: extraction line, and a convectron on the roughing side.
GAUGE_BASE = {"ion": 1e-8, "convectron": 1e-3}


def gauge_type_for(name: str) -> str:
    """Guess the gauge type from the Pychron naming habit (``IG``, ``CG1``, ``CG2``)."""
    return "ion" if name.upper().startswith("IG") else "convectron"


class SimGaugeBackend(GaugeBackend):
    """Pressures around a base value with log-normal noise (a few percent).

    ``set_base`` and ``scale`` are the hooks a simulated extraction line can drive later
    (opening a valve to a pipette raises the pressure, pumping lowers it).
    """

    kind = "sim"

    def __init__(self, gauges: Mapping[str, str] | None = None, *, noise: float = 0.03,
                 seed: int | None = None) -> None:
        if noise < 0 or not math.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = noise
        self._rng = random.Random(seed)
        self._base: dict[str, float] = {}
        for name, gtype in (gauges or {}).items():
            self.add_gauge(name, gtype)

    def add_gauge(self, name: str, gauge_type: str | None = None,
                  base: float | None = None) -> None:
        gtype = gauge_type or gauge_type_for(name)
        if gtype not in GAUGE_BASE:
            raise ValueError(f"unknown gauge type {gtype!r} (known: {', '.join(GAUGE_BASE)})")
        self._base[name] = GAUGE_BASE[gtype] if base is None else float(base)

    def set_base(self, gauge: str, pressure: float) -> None:
        """Set the pressure a gauge fluctuates around (torr)."""
        if gauge not in self._base:
            raise KeyError(gauge)
        if not pressure > 0:
            raise ValueError(f"a pressure must be > 0, got {pressure!r}")
        self._base[gauge] = float(pressure)

    def scale(self, gauge: str, factor: float) -> None:
        """Multiply a gauge's base pressure (a burst of gas, a pump-down step)."""
        self.set_base(gauge, self._base[gauge] * factor)

    def base(self, gauge: str) -> float:
        return self._base[gauge]

    def follow(self, bank: Device, valve: str, gauge: str, factor: float) -> Callable[[], None]:
        """Couple a gauge to a valve: opening it multiplies the gauge's base pressure by
        ``factor``, closing it divides again (a crude gas inlet or pump isolation).

        Listens to the bank's change events (``{"state": 0|1, ...}``, ValveBank convention);
        returns the function that uncouples them.
        """
        if gauge not in self._base:
            raise KeyError(gauge)
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
        now = bank.snapshot().get(valve)
        last = {valve: int(bool(now.get("state"))) if isinstance(now, dict) else 0}

        def on_change(change: Change) -> None:
            if change.signal != valve or not isinstance(change.value, dict):
                return
            state = int(bool(change.value.get("state")))
            previous = last.get(valve, 0)
            last[valve] = state
            if state != previous:
                self.scale(gauge, factor if state else 1.0 / factor)

        return bank.subscribe(on_change)

    async def read_pressure(self, gauge: str) -> float:
        try:
            base = self._base[gauge]
        except KeyError:
            raise BackendError(f"no simulated gauge {gauge!r}") from None
        return base * math.exp(self._rng.gauss(0.0, self.noise))

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "noise": self.noise}
