"""The extraction-line scripting API on the acquisition node (seed 002, "Open Valve A").

The seed's call chain: ``line.open("A")`` -> remote manager -> TCP command server on the valve
node -> valve bank -> hardware, with the change coming back on the bus. A script gets a
:class:`Lab` (async) or a :class:`BlockingLab` (plain functions)::

    async def main(lab):                       # labbridge run script.py --lab acquisition.yaml
        line = lab.line
        await line.close("A")
        await line.open("B")
        await line.wait_for(lambda: line.is_open("B"), timeout=5)
        await lab.sleep(1)

    def main(lab):                             # the same, blocking
        lab.line.open("B")

Every call is recorded as a step (:attr:`Lab.steps`) for the progress display.

The node file decides what a script gets: ``lab.line`` gathers the valve links
(``remote_manager`` of valves), ``lab.furnace``, ``lab.laser`` and ``lab.spectrometer`` are the
furnace, laser and spectrometer links (``remote_manager`` with ``klass: RemoteFurnaceManager``,
``RemoteLaserManager``, ``ArgusSpectrometer``), None when the node has none.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from labbridge.links.pychron.client import PychronClientError
from labbridge.links.pychron.remote import Actuation, RemoteValves
from labbridge.node.node import Node


class ScriptError(RuntimeError):
    """A script step failed; the message says which and why."""


@dataclass
class Step:
    what: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    ok: bool | None = None
    detail: str = ""


class _Recorder:
    def __init__(self, on_step: Callable[[Step], None] | None = None) -> None:
        self.steps: list[Step] = []
        self.on_step = on_step

    def begin(self, what: str) -> Step:
        step = Step(what)
        self.steps.append(step)
        self._notify(step)
        return step

    def end(self, step: Step, ok: bool, detail: str = "") -> None:
        step.ended = time.monotonic()
        step.ok = ok
        step.detail = detail
        self._notify(step)

    def _notify(self, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(step)


class ExtractionLine:
    """Valves of one or more remote valve nodes, by valve name."""

    def __init__(self, managers: list[Any], rec: _Recorder) -> None:
        self._managers = managers
        self._rec = rec

    def _manager_of(self, name: str) -> Any:
        for m in self._managers:
            if name in m.monitor.valves:
                return m
        if len(self._managers) == 1:
            return self._managers[0]
        known = sorted(n for m in self._managers for n in m.monitor.valves)
        raise ScriptError(f"no valve named {name!r} on any valve node (known: "
                          f"{', '.join(known) or 'none yet'})")

    async def _actuate(self, name: str, target: bool) -> Actuation:
        what = f"{'open' if target else 'close'} {name}"
        step = self._rec.begin(what)
        mgr = self._manager_of(name)
        remote: RemoteValves = mgr.remote
        try:
            act = await (remote.open(name) if target else remote.close(name))
        except PychronClientError as exc:
            self._rec.end(step, False, str(exc))
            raise ScriptError(f"{what}: {exc}") from exc
        mgr.monitor.push(name, state=act.state)
        self._rec.end(step, True, "software-locked: not actuated" if act.locked else "")
        return act

    async def open(self, name: str) -> Actuation:
        return await self._actuate(name, True)

    async def close(self, name: str) -> Actuation:
        return await self._actuate(name, False)

    def is_open(self, name: str) -> bool:
        """The latest known state (pushed or polled), without a round trip."""
        view = self._manager_of(name).monitor.valves.get(name)
        return bool(view and view.state)

    async def state(self, name: str) -> bool:
        """Ask the node now."""
        return bool(await self._manager_of(name).remote.state(name))

    async def wait_for(self, condition: Callable[[], bool | Awaitable[bool]], timeout: float,
                       *, poll: float = 0.05, what: str = "condition") -> None:
        await wait_for(condition, timeout, poll=poll, what=what, rec=self._rec)


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], timeout: float, *,
                   poll: float = 0.05, what: str = "condition",
                   rec: _Recorder | None = None) -> None:
    """Wait until ``condition()`` is true; :class:`ScriptError` after ``timeout`` seconds."""
    step = rec.begin(f"wait for {what}") if rec else None
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            if rec and step:
                rec.end(step, True)
            return
        if time.monotonic() >= deadline:
            if rec and step:
                rec.end(step, False, f"timed out after {timeout:g} s")
            raise ScriptError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(poll)


class _Instrument:
    """Common part of the instrument wrappers: any command of the node's vocabulary as a
    step."""

    def __init__(self, client: Any, rec: _Recorder) -> None:
        self.client = client
        self._rec = rec

    async def command(self, text: str) -> str:
        """Send one command of the node's vocabulary (``LowerFunnel``, a JSON request...) and
        return its reply; an ``ERROR`` reply fails the script."""
        step = self._rec.begin(text if len(text) <= 60 else text[:57] + "...")
        try:
            reply = str(await self.client.call(text))
        except Exception as exc:
            self._rec.end(step, False, str(exc))
            raise ScriptError(f"{text}: {exc}") from exc
        self._rec.end(step, True, reply[:40])
        return reply


class Furnace(_Instrument):
    """A remote furnace for scripts: ``set_setpoint`` and ``wait_for_temperature``; the
    funnel, magnets and bake-out through :meth:`command` (``LowerFunnel``,
    ``{"command": "SetBakeoutClosedLoopSetpoint", "channel": 1, "setpoint": 150}``...)."""

    async def set_setpoint(self, value: float) -> None:
        step = self._rec.begin(f"furnace setpoint {value:g} C")
        try:
            await self.client.set_setpoint(value)
        except Exception as exc:
            self._rec.end(step, False, str(exc))
            raise ScriptError(f"set furnace setpoint {value:g}: {exc}") from exc
        self._rec.end(step, True)

    async def temperature(self) -> float:
        return float(await self.client.temperature())

    async def wait_for_temperature(self, target: float, *, tolerance: float = 2.0,
                                   timeout: float = 600.0, poll: float = 0.2) -> float:
        step = self._rec.begin(f"wait for furnace {target:g} +- {tolerance:g} C")
        deadline = time.monotonic() + timeout
        temp = float("nan")
        while time.monotonic() < deadline:
            try:
                temp = await self.temperature()
            except Exception as exc:
                self._rec.end(step, False, str(exc))
                raise ScriptError(f"read furnace temperature: {exc}") from exc
            step.detail = f"{temp:.1f} C"
            self._rec._notify(step)
            if abs(temp - target) <= tolerance:
                self._rec.end(step, True, f"{temp:.1f} C")
                return temp
            await asyncio.sleep(poll)
        self._rec.end(step, False, f"{temp:.1f} C after {timeout:g} s")
        raise ScriptError(f"furnace did not reach {target:g} C within {timeout:g} s "
                          f"(last {temp:.1f} C)")


class Laser(_Instrument):
    """A remote laser for scripts: enable, power, moves that wait for the stage, and the
    stage camera's ``snapshot``."""

    async def _step(self, what: str, coro: Awaitable[Any]) -> Any:
        step = self._rec.begin(what)
        try:
            result = await coro
        except Exception as exc:
            self._rec.end(step, False, str(exc))
            raise ScriptError(f"{what}: {exc}") from exc
        self._rec.end(step, True)
        return result

    async def enable(self) -> None:
        await self._step("laser enable", self.client.enable())

    async def disable(self) -> None:
        await self._step("laser disable", self.client.disable())

    async def set_power(self, percent: float) -> None:
        await self._step(f"laser power {percent:g} %", self.client.set_power(percent))

    async def read_power(self) -> float:
        return float(await self.client.read_power())

    async def position(self) -> tuple[float, float, float]:
        x, y, z = await self.client.position()
        return float(x), float(y), float(z)

    async def _move(self, what: str, coro: Awaitable[Any], wait: bool, timeout: float) -> None:
        async def move_and_wait() -> None:
            await coro
            if wait:
                await self.client.wait_stopped(timeout=timeout)

        await self._step(what, move_and_wait())

    async def goto_hole(self, hole: int | str, *, wait: bool = True,
                        timeout: float = 60.0) -> None:
        await self._move(f"laser to hole {hole}", self.client.goto_hole(hole), wait, timeout)

    async def move_to(self, x: float, y: float, *, wait: bool = True,
                      timeout: float = 60.0) -> None:
        await self._move(f"laser to {x:g},{y:g}", self.client.move_to(x, y), wait, timeout)

    async def snapshot(self, name: str, pic_format: str = ".png") -> Snapshot:
        """The stage camera's picture (``Snapshot name,format``): where the node saved it, where
        it uploaded it ("" when it does not), and the image bytes."""
        from labbridge.links.pychron.laser import parse_snapshot_reply

        async def take() -> Snapshot:
            reply = await self.client.call(f"Snapshot {name},{pic_format}")
            return Snapshot(*parse_snapshot_reply(reply))

        shot: Snapshot = await self._step(f"laser snapshot {name}", take())
        return shot


@dataclass(frozen=True)
class Snapshot:
    """A laser stage picture: the node's file, the upload path, the image (PNG bytes)."""

    local_path: str
    upload_path: str
    image: bytes


class Spectrometer(_Instrument):
    """A remote spectrometer for scripts: ``measure`` returns averaged detector readings."""

    async def measure(self, cycles: int = 5, *, integration: float | None = None,
                      poll: float = 0.05) -> dict[str, float]:
        step = self._rec.begin(f"measure {cycles} cycles")
        try:
            if integration is not None:
                await self.client.set_integration_time(integration)
            sums: dict[str, float] = {}
            seen = 0
            last: dict[str, float] | None = None
            while seen < cycles:
                data = await self.client.data()
                if data and data != last:  # new data only after each integration period
                    last = data
                    seen += 1
                    for k, v in data.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    step.detail = f"cycle {seen}/{cycles}"
                    self._rec._notify(step)
                else:
                    await asyncio.sleep(poll)
        except Exception as exc:
            self._rec.end(step, False, str(exc))
            raise ScriptError(f"measure: {exc}") from exc
        means = {k: v / cycles for k, v in sums.items()}
        top = max(means, key=lambda k: means[k]) if means else "-"
        self._rec.end(step, True, f"{top}: {means.get(top, 0.0):.4g}")
        return means


class Lab:
    """What a script drives, built from a running acquisition node."""

    def __init__(self, node: Node, on_step: Callable[[Step], None] | None = None) -> None:
        self.node = node
        self._rec = _Recorder(on_step)
        managers = [s for s in node.services if isinstance(getattr(s, "remote", None),
                                                             RemoteValves)]
        self.line = ExtractionLine(managers, self._rec)
        furnace = self._find("furnace")
        laser = self._find("laser")
        spectrometer = self._find("spectrometer")
        self.furnace: Furnace | None = Furnace(furnace, self._rec) if furnace else None
        self.laser: Laser | None = Laser(laser, self._rec) if laser else None
        self.spectrometer: Spectrometer | None = (Spectrometer(spectrometer, self._rec)
                                                  if spectrometer else None)

    def _find(self, attr: str) -> Any:
        for s in self.node.services:
            obj = getattr(s, attr, None)
            if obj is not None:
                return obj
        return None

    @property
    def steps(self) -> list[Step]:
        return self._rec.steps

    async def sleep(self, seconds: float) -> None:
        step = self._rec.begin(f"sleep {seconds:g} s")
        await asyncio.sleep(seconds)
        self._rec.end(step, True)

    async def wait_for(self, condition: Callable[[], bool | Awaitable[bool]], timeout: float,
                       *, poll: float = 0.05, what: str = "condition") -> None:
        await wait_for(condition, timeout, poll=poll, what=what, rec=self._rec)

    async def step(self, what: str, coro: Awaitable[Any]) -> Any:
        """Record an arbitrary awaited action as a step."""
        step = self._rec.begin(what)
        try:
            result = await coro
        except Exception as exc:
            self._rec.end(step, False, str(exc))
            raise
        self._rec.end(step, True)
        return result


class _BlockingProxy:
    """Calls coroutine methods of ``target`` on ``loop`` from a worker thread."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            def call(*args: Any, **kw: Any) -> Any:
                return asyncio.run_coroutine_threadsafe(attr(*args, **kw), self._loop).result()

            return call
        if attr is not None and not callable(attr) and hasattr(attr, "__dict__") and \
                not isinstance(attr, int | float | str | bool | list | dict):
            return _BlockingProxy(attr, self._loop)
        return attr


class BlockingLab(_BlockingProxy):
    """:class:`Lab` for synchronous scripts (run in a worker thread by ``labbridge run``)."""

    def __init__(self, lab: Lab, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(lab, loop)
        self.line = _BlockingProxy(lab.line, loop)

    def sleep(self, seconds: float) -> None:
        asyncio.run_coroutine_threadsafe(self._target.sleep(seconds), self._loop).result()

    def wait_for(self, condition: Callable[[], bool], timeout: float, **kw: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._target.wait_for(condition, timeout, **kw),
                                         self._loop).result()


async def run_script_main(main: Callable[..., Any], lab: Lab) -> Any:
    """Run a script's ``main(lab)``: awaited if async, in a worker thread if blocking."""
    if inspect.iscoroutinefunction(main):
        return await main(lab)
    loop = asyncio.get_running_loop()
    return await asyncio.to_thread(main, BlockingLab(lab, loop))
