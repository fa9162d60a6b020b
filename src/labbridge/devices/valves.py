"""The valve bank: valves with state, software lock, owner and interlocks over a backend.

This is the device behind the Pychron valve vocabulary (spec pychron.md section 5): the
command server maps ``Open``/``Close``/``GetValveState``/... onto it, the words and checksums
of section 6 are built from :attr:`ValveBank.names`, :meth:`ValveBank.is_open`,
:meth:`ValveBank.is_locked`, :meth:`ValveBank.owner` and :meth:`ValveBank.state_str`.

Semantics (spec section 5 and tests/vectors/pychron.json ``replies``):

* actuating a valve already in the target state still actuates and answers ``ACTUATED``
  (the real server's ``OK``; spec section 4 note, section 17 row 12);
* a software-locked valve is never actuated: ``LOCKED`` (wire ``ok``);
* an unknown or disabled valve: ``UNKNOWN`` (wire ``ERROR 004``);
* an interlock violation, an ownership refusal or a hardware failure/timeout: ``REFUSED``
  with a reason (wire ``ERROR 015``).

Concurrency (spec section 17 row 19): actuations run under an :class:`asyncio.Lock` per
valve, so two clients never interleave actuations of one valve; valves tied together by
interlocks share one lock, so an interlock check and the actuation it guards cannot race
with an actuation of the partner valve (docs/adr/0020). Unrelated valves actuate
concurrently. Backend calls are coroutines bounded by ``timeout``; a hung backend becomes
``REFUSED``, never a hung client.

Persistence (docs/adr/0021): states and locks are written to a JSON state file on every
change (coalesced, atomic) and restored by :meth:`ValveBank.start`; a backend that can read
its outputs back wins over the file for the state, the file wins for locks. With
``durable=True`` (the default, docs/adr/0110) :meth:`ValveBank.open` and
:meth:`ValveBank.close` return only once the change is written and fsynced, so an
acknowledged actuation survives a crash right after the reply; a failed write raises
:class:`~labbridge.devices.state_file.StateNotSaved`. Callers that change locks await
:meth:`ValveBank.saved` before acknowledging.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labbridge.devices.backends import BackendError, ValveBackend
from labbridge.devices.base import Device
from labbridge.devices.state_file import CoalescingWriter, load_json_tolerant

log = logging.getLogger(__name__)

#: Version of the state file layout written by :class:`ValveBank`.
STATE_FILE_VERSION = 1
#: Signal of a refused actuation (``{valve, action, reason, requester}``); no valve may be
#: named so.
REFUSED_SIGNAL = "event.refused"


class SwitchKind(enum.Enum):
    """Pychron switch classes; the value is the ``state_str`` prefix (spec section 6.5)."""

    VALVE = "VALVE"
    SWITCH = "SWITCH"
    MANUAL = "MANUAL_SWITCH"


class Outcome(enum.Enum):
    """What an Open/Close did; the command server turns it into the exact wire reply."""

    ACTUATED = "actuated"  # -> "OK" (also when it was already in that state)
    LOCKED = "locked"  # software-locked: actuation skipped -> "ok"
    UNKNOWN = "unknown"  # no such valve, or valve disabled -> ERROR 004
    REFUSED = "refused"  # interlock, ownership, hardware failure -> ERROR 015


@dataclass(frozen=True, slots=True)
class ActuationResult:
    outcome: Outcome
    name: str
    action: str  # "open" | "close"
    reason: str = ""  # human text for REFUSED (e.g. "interlock: B is open")

    @property
    def ok(self) -> bool:
        """True for ACTUATED and LOCKED: the replies a Pychron client counts as success."""
        return self.outcome in (Outcome.ACTUATED, Outcome.LOCKED)


@dataclass
class ValveConfig:
    """One entry of the valves file (spec section 16.4 keys, plus labbridge extras)."""

    name: str
    address: str = ""  # empty: the backend address is the valve name
    kind: SwitchKind = SwitchKind.VALVE
    description: str = ""
    enabled: bool = True
    interlocks: tuple[str, ...] = ()  # may not open while any of these is open
    positive_interlocks: tuple[str, ...] = ()  # may not open unless all of these are open
    inverted_logic: bool = False  # backend level True means CLOSED
    settling_time: float = 0.0  # seconds to wait after actuation before confirming
    query_state: bool = True  # indicator_state reads the backend when True
    # labbridge extras ------------------------------------------------------------------------
    initially_open: bool = False  # state when neither the state file nor hardware says
    initially_locked: bool = False  # lock when the state file does not say
    layout: dict[str, float] | None = None  # {"x": .., "y": ..} for a future web schematic

    @property
    def backend_address(self) -> str:
        return self.address or self.name


@dataclass
class _Valve:
    cfg: ValveConfig
    state: bool
    locked: bool
    owner: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


Sleep = Callable[[float], Awaitable[Any]]


class ValveBank(Device):
    """A bank of valves and switches on one backend (spec pychron.md sections 5 and 6)."""

    kind = "valve_bank"

    def __init__(self, name: str, valves: list[ValveConfig], backend: ValveBackend,
                 *, state_file: Path | None = None, check_ownership: bool = False,
                 timeout: float = 5.0, sleep: Sleep | None = None,
                 durable: bool = True) -> None:
        super().__init__(name)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
        self.backend = backend
        self.state_file = state_file
        #: Open/Close return only once their change is on disk (docs/adr/0110).
        self.durable = durable
        self.check_ownership = check_ownership
        self.timeout = timeout
        self._sleep: Sleep = sleep or asyncio.sleep
        self._valves: dict[str, _Valve] = {}
        for cfg in valves:
            if not cfg.name:
                raise ValueError("a valve needs a non-empty name")
            if cfg.name in self._valves:
                raise ValueError(f"duplicate valve name {cfg.name!r}")
            if cfg.name == REFUSED_SIGNAL:
                raise ValueError(f"{REFUSED_SIGNAL!r} is reserved (refusal events)")
            if cfg.settling_time < 0 or not math.isfinite(cfg.settling_time):
                raise ValueError(f"valve {cfg.name}: settling_time must be >= 0")
            self._valves[cfg.name] = _Valve(cfg, cfg.initially_open, cfg.initially_locked)
        for cfg in valves:
            for other in (*cfg.interlocks, *cfg.positive_interlocks):
                if other not in self._valves:
                    raise ValueError(f"valve {cfg.name}: interlock names unknown valve "
                                     f"{other!r}")
                if other == cfg.name:
                    raise ValueError(f"valve {cfg.name}: a valve cannot interlock itself")
        self.names: list[str] = [cfg.name for cfg in valves]
        self._share_interlock_locks()
        self._writer = CoalescingWriter(state_file, self._state_data) if state_file else None
        self._started = False
        #: Actuations running (each runs to its end; see _actuate).
        self._actuations: set[asyncio.Future[ActuationResult]] = set()

    def _share_interlock_locks(self) -> None:
        """Give every group of valves connected by interlocks one shared lock (ADR 0020)."""
        parent = {n: n for n in self._valves}

        def find(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for v in self._valves.values():
            for other in (*v.cfg.interlocks, *v.cfg.positive_interlocks):
                parent[find(other)] = find(v.cfg.name)
        locks: dict[str, asyncio.Lock] = {}
        for n, v in self._valves.items():
            v.lock = locks.setdefault(find(n), asyncio.Lock())

    # -- queries ---------------------------------------------------------------------------
    def _get(self, name: str) -> _Valve:
        try:
            return self._valves[name]
        except KeyError:
            raise KeyError(name) from None

    def has(self, name: str) -> bool:
        """True when ``name`` is configured AND enabled (an Open of anything else is
        ``UNKNOWN``, spec section 5 and the ``disabled valve`` scenario)."""
        v = self._valves.get(name)
        return v is not None and v.cfg.enabled

    def config(self, name: str) -> ValveConfig:
        return self._get(name).cfg

    def is_open(self, name: str) -> bool:
        """In-memory state (what GetValveState/GetValveStates report, spec section 6.2)."""
        return self._get(name).state

    def is_locked(self, name: str) -> bool:
        return self._get(name).locked

    def owner(self, name: str) -> str:
        return self._get(name).owner

    def states(self) -> dict[str, bool]:
        """Every valve's in-memory state, in config order."""
        return {n: v.state for n, v in self._valves.items()}

    def locks(self) -> dict[str, bool]:
        return {n: v.locked for n, v in self._valves.items()}

    def owners(self) -> dict[str, str]:
        return {n: v.owner for n, v in self._valves.items()}

    def state_str(self, name: str) -> str:
        """Pychron ``state_str()`` (spec section 6.5): ``VALVE-ATrueFalse`` for a valve or
        switch (name, state, software lock), ``MANUAL_SWITCH-MTrue`` for a manual switch."""
        v = self._get(name)
        prefix = f"{v.cfg.kind.value}-{name}{v.state}"
        return prefix if v.cfg.kind is SwitchKind.MANUAL else f"{prefix}{v.locked}"

    # -- lock and owner --------------------------------------------------------------------
    def lock(self, name: str) -> None:
        """Software-lock a valve: Open/Close then answer LOCKED without actuating."""
        self._set_lock(name, True)

    def unlock(self, name: str) -> None:
        self._set_lock(name, False)

    def _set_lock(self, name: str, locked: bool) -> None:
        v = self._get(name)
        if v.locked != locked:
            v.locked = locked
            log.info("%s: valve %s %s", self.name, name, "locked" if locked else "unlocked")
            self._changed(name)

    def set_owner(self, name: str, owner: str) -> None:
        """Set (or clear with "") the owner used by the ownership check and GetValveOwners."""
        v = self._get(name)
        if v.owner != owner:
            v.owner = owner
            self._changed(name, persist=False)

    # -- actuation -------------------------------------------------------------------------
    async def open(self, name: str, requester: str | None = None) -> ActuationResult:
        """Open a valve; see the module docstring for the outcomes."""
        return await self._actuate(name, True, requester)

    async def close(self, name: str, requester: str | None = None) -> ActuationResult:
        return await self._actuate(name, False, requester)

    async def _actuate(self, name: str, target: bool, requester: str | None) -> ActuationResult:
        """Run one actuation to its end even if the caller goes away.

        A caller can be cancelled half-way (its client disconnects, a server stops, a task
        is cancelled): the hardware write, the read-back, the bank's memory and the state file
        must not part ways there. So the actuation runs as a task of its own, shielded; the
        caller's cancellation ends only the caller's wait, and the bank's stop() waits for the
        actuations still running (bounded by the hardware timeouts).
        """
        task = asyncio.ensure_future(self._actuate_whole(name, target, requester))
        self._actuations.add(task)
        task.add_done_callback(self._actuation_done)
        return await asyncio.shield(task)

    def _actuation_done(self, task: asyncio.Future[ActuationResult]) -> None:
        self._actuations.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Seen by the caller unless it went away; then it is logged here, not lost.
            log.error("%s: actuation failed: %r", self.name, task.exception())

    async def _actuate_whole(self, name: str, target: bool,
                             requester: str | None) -> ActuationResult:
        action = "open" if target else "close"
        if not name:
            # The real server resolves an empty name to a failed actuation (vector
            # "Open" -> "ERROR 015 : Valve  failed to actuate open"), not to ERROR 004.
            return ActuationResult(Outcome.REFUSED, name, action, "no valve name given")
        v = self._valves.get(name)
        if v is None or not v.cfg.enabled:
            why = "disabled" if v is not None else "not a registered valve"
            log.info("%s: %s %s refused: %s", self.name, action, name, why)
            return ActuationResult(Outcome.UNKNOWN, name, action, why)
        async with v.lock:
            result = await self._actuate_locked(v, target, requester)
        if self.durable:
            # Outside the group's lock: other actuations go on and share the write.
            await self.saved()
        if result.outcome is Outcome.REFUSED:
            log.warning("%s: %s %s refused (requester %s): %s", self.name, action, name,
                        requester or "-", result.reason)
            # For dashboards and the recorder: who was refused what, and why (an interlock,
            # an owner, the hardware). Signal REFUSED_SIGNAL, never a valve name.
            self.emit(REFUSED_SIGNAL, {"valve": name, "action": action,
                                       "reason": result.reason, "requester": requester or ""})
        return result

    def _refusal(self, v: _Valve, target: bool, requester: str | None) -> str:
        """Why this actuation may not happen, or "" (ownership, then interlocks)."""
        if self.check_ownership and v.owner and v.owner != requester:
            return f"owned by {v.owner}"
        if target:
            for other in v.cfg.interlocks:
                if self._valves[other].state:
                    return f"interlock: {other} is open"
            for other in v.cfg.positive_interlocks:
                if not self._valves[other].state:
                    return f"positive interlock: {other} is closed"
        return ""

    async def _actuate_locked(self, v: _Valve, target: bool,
                              requester: str | None) -> ActuationResult:
        name = v.cfg.name
        action = "open" if target else "close"
        why = self._refusal(v, target, requester)
        if why:
            return ActuationResult(Outcome.REFUSED, name, action, why)
        if v.locked:
            return ActuationResult(Outcome.LOCKED, name, action, "software locked")
        if v.cfg.kind is SwitchKind.MANUAL:
            # A manual switch has no actuator: the operator declares its state.
            self._set_state(v, target)
            return ActuationResult(Outcome.ACTUATED, name, action)
        address = v.cfg.backend_address
        level = target != v.cfg.inverted_logic
        try:
            async with asyncio.timeout(self.timeout):
                await self.backend.set_output(address, level)
        except (BackendError, OSError, TimeoutError) as exc:
            reason = _hardware_reason(exc, self.timeout)
            await self._resync_after_failure(v)
            return ActuationResult(Outcome.REFUSED, name, action, f"hardware: {reason}")
        if v.cfg.settling_time:
            await self._sleep(v.cfg.settling_time)
        try:
            async with asyncio.timeout(self.timeout):
                level_back = await self.backend.read_output(address)
        except (BackendError, OSError, TimeoutError) as exc:
            # Actuated but unconfirmed: we cannot tell where it is; report, keep memory.
            reason = _hardware_reason(exc, self.timeout)
            return ActuationResult(Outcome.REFUSED, name, action,
                                   f"hardware: read-back failed: {reason}")
        if level_back is None:
            self._set_state(v, target)
            return ActuationResult(Outcome.ACTUATED, name, action)
        actual = level_back != v.cfg.inverted_logic
        self._set_state(v, actual)
        if actual != target:
            return ActuationResult(
                Outcome.REFUSED, name, action,
                f"read-back disagrees: {name} is {'open' if actual else 'closed'}")
        return ActuationResult(Outcome.ACTUATED, name, action)

    async def _resync_after_failure(self, v: _Valve) -> None:
        """After a failed write, believe the hardware if it can tell us where the valve is."""
        try:
            async with asyncio.timeout(self.timeout):
                level = await self.backend.read_output(v.cfg.backend_address)
        except (BackendError, OSError, TimeoutError):
            return
        if level is not None:
            self._set_state(v, level != v.cfg.inverted_logic)

    async def indicator_state(self, name: str) -> bool:
        """``GetIndicatorState`` (spec section 5): the hardware's view when ``query_state`` is
        on and the backend can read back, else the in-memory state. KeyError if unknown.

        A read that disagrees with memory updates memory (someone moved the valve by hand),
        except while an actuation of that valve is in flight. A failed read falls back to
        memory with a warning: the client asked for the state, not for a diagnosis.
        """
        v = self._get(name)
        if not v.cfg.query_state or v.cfg.kind is SwitchKind.MANUAL:
            return v.state
        try:
            async with asyncio.timeout(self.timeout):
                level = await self.backend.read_output(v.cfg.backend_address)
        except (BackendError, OSError, TimeoutError) as exc:
            log.warning("%s: indicator of %s unreadable (%s); reporting the last known state",
                        self.name, name, _hardware_reason(exc, self.timeout))
            return v.state
        if level is None:
            return v.state
        actual = level != v.cfg.inverted_logic
        if actual != v.state and not v.lock.locked():
            log.warning("%s: %s found %s by read-back (memory said %s)", self.name, name,
                        "open" if actual else "closed", "open" if v.state else "closed")
            self._set_state(v, actual)
        return actual

    # -- change events and persistence -----------------------------------------------------
    def _set_state(self, v: _Valve, state: bool) -> None:
        if v.state != state:
            v.state = state
            self._changed(v.cfg.name)

    def _valve_value(self, v: _Valve) -> dict[str, Any]:
        return {"state": int(v.state), "locked": int(v.locked), "owner": v.owner}

    def _changed(self, name: str, *, persist: bool = True) -> None:
        self.emit(name, self._valve_value(self._valves[name]))
        if persist and self._writer is not None:
            self._writer.schedule()

    def _state_data(self) -> dict[str, Any]:
        return {
            "version": STATE_FILE_VERSION,
            "bank": self.name,
            "saved_at": time.time(),
            "valves": {n: {"state": v.state, "locked": v.locked}
                       for n, v in self._valves.items()},
        }

    def _restore_from_file(self) -> None:
        if self.state_file is None:
            return
        data = load_json_tolerant(self.state_file)
        if data is None:
            return
        valves = data.get("valves")
        if not isinstance(valves, dict):
            log.warning("state file %s has no 'valves' mapping: ignored", self.state_file)
            return
        for name, entry in valves.items():
            v = self._valves.get(name)
            if v is None:
                log.warning("state file %s names valve %r, not in the configuration: ignored",
                            self.state_file, name)
                continue
            if not isinstance(entry, dict):
                log.warning("state file %s: entry for %s is not a mapping: ignored",
                            self.state_file, name)
                continue
            state, locked = entry.get("state"), entry.get("locked")
            before = (v.state, v.locked)
            if isinstance(state, bool):
                v.state = state
            if isinstance(locked, bool):
                v.locked = locked
            if (v.state, v.locked) != before:
                self.emit(name, self._valve_value(v))

    async def _restore_from_hardware(self) -> None:
        for v in self._valves.values():
            if v.cfg.kind is SwitchKind.MANUAL:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    level = await self.backend.read_output(v.cfg.backend_address)
            except (BackendError, OSError, TimeoutError) as exc:
                log.warning("%s: cannot read %s at start (%s); using the saved state",
                            self.name, v.cfg.name, _hardware_reason(exc, self.timeout))
                continue
            if level is not None:
                self._set_state(v, level != v.cfg.inverted_logic)

    # -- Device ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {n: self._valve_value(v) for n, v in self._valves.items()}

    def signals(self) -> dict[str, dict[str, Any]]:
        return {"*": {"on_change": True}, "event.*": {"event": True}}

    def describe(self) -> dict[str, Any]:
        valves: list[dict[str, Any]] = []
        for v in self._valves.values():
            c = v.cfg
            entry: dict[str, Any] = {
                "name": c.name, "kind": c.kind.value, "description": c.description,
                "enabled": c.enabled, "address": c.backend_address,
                "interlocks": list(c.interlocks),
                "positive_interlocks": list(c.positive_interlocks),
            }
            if c.layout:
                entry["layout"] = dict(c.layout)
            valves.append(entry)
        return {"kind": self.kind, "name": self.name, "backend": self.backend.describe(),
                "check_ownership": self.check_ownership, "valves": valves}

    async def start(self) -> None:
        """Start the backend, then restore: file for states and locks, hardware for states."""
        if self._started:
            return
        await self.backend.start()
        self._started = True
        # The restore itself must not be written back before the hardware had its say.
        writer, self._writer = self._writer, None
        try:
            self._restore_from_file()
            await self._restore_from_hardware()
        finally:
            self._writer = writer
        if self._writer is not None:
            self._writer.schedule()

    async def stop(self) -> None:
        """Let running actuations end, flush the state file synchronously, then stop the
        backend; idempotent."""
        if self._actuations:
            # Bounded: each step of an actuation has the hardware timeout; settling adds its
            # own time. Past that, the backend is stopped under it (and says so).
            bound = 3 * self.timeout + max((v.cfg.settling_time for v in
                                            self._valves.values()), default=0.0)
            _done, pending = await asyncio.wait(set(self._actuations), timeout=bound)
            if pending:
                log.warning("%s: %d actuation(s) still running after %.1f s at stop",
                            self.name, len(pending), bound)
        if self._writer is not None:
            await self._writer.flush()
        if self._started:
            self._started = False
            await self.backend.stop()

    async def wait_saved(self) -> None:
        """Wait until every change so far is on disk (tests, orderly shutdown)."""
        if self._writer is not None:
            await self._writer.wait()

    async def saved(self) -> None:
        """Return once every change so far (states and locks) is written and fsynced;
        :class:`~labbridge.devices.state_file.StateNotSaved` if it could not be. Immediate
        without a state file."""
        if self._writer is not None:
            await self._writer.saved()


def _hardware_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (timeout)"
    return str(exc) or type(exc).__name__


def parse_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Interlock lists as the valves file writes them: ``"B,C"``, ``"B"`` or ``[B, C]``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in (str(i) for i in items) if s.strip())
