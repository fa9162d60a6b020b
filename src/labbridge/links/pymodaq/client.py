"""The distant computer's side: a labbridge device as a PyMoDAQ ACTUATOR or GRABBER client.

Spec pymodaq.md §2, §4.1 to §4.3, §6, §7.2: connect to the main computer's TCPServer, send the
client type, then ``Infos`` with the device's settings XML, then serve commands until the
server goes away; reconnect with exponential backoff (§9 #11 [lb]). The generation is
configured (a client speaks first, so it cannot detect): ``g1`` (+ dialect ``1.6`` or ``2.1``) or
``g3``.

A device is an actuator when it has ``move_abs`` and a detector when it has ``grab``
(duck-typed: :class:`~labbridge.devices.stage.Stage`, :class:`~labbridge.devices.camera.Camera`,
:class:`~labbridge.devices.spectrum.Spectrometer`, or a server's remote devices). Commands run
one at a time in a per-connection worker task, except ``stop_motion``, which acts at once so it
can interrupt a move; a slow device therefore never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import numpy as np

from labbridge.links.pymodaq.settings_xml import settings_to_xml, xml_values
from labbridge.links.pymodaq.stream import PyMoDAQStream
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.pymodaq.messages import (
    AxisInfo,
    ClientType,
    Dialect,
    Done,
    Generation,
    GetPosition,
    Hello,
    Info,
    Infos,
    InfoXml,
    MoveAbs,
    MoveDone,
    MoveHome,
    MoveRel,
    PositionIs,
    Quit,
    Role,
    SendData,
    SetInfo,
    StopMotion,
    Unknown,
)
from labbridge.protocol.pymodaq.objects import (
    Axis,
    data_from_plugins,
    data_to_export,
)
from labbridge.transport.backoff import Backoff

log = logging.getLogger(__name__)


def client_type_of(device: Any) -> ClientType:
    if callable(getattr(device, "move_abs", None)):
        return ClientType.ACTUATOR
    if callable(getattr(device, "grab", None)):
        return ClientType.GRABBER
    raise TypeError(f"{device!r} is neither an actuator (move_abs) nor a detector (grab)")


class PyMoDAQClient:
    """Serve ``device`` to a PyMoDAQ-style server at ``host:port``; reconnects until stopped."""

    def __init__(self, device: Any, host: str, port: int, *, name: str = "pymodaq-client",
                 generation: Generation = Generation.G1, dialect: Dialect = Dialect.G1A,
                 backoff: Backoff | None = None, max_message: int = 256 * 1024 * 1024,
                 send_quit: bool = True) -> None:
        self.device = device
        self.client_type = client_type_of(device)
        self.host = host
        self.port = port
        self.name = name
        self.generation = generation
        self.dialect = dialect
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.max_message = max_message
        self.send_quit = send_quit
        self.stream: PyMoDAQStream | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.commands = 0
        self.last_close_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._side_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping = True
        stream = self.stream
        if stream is not None and stream.is_open:
            if self.send_quit:
                with contextlib.suppress(ConnectionError):
                    stream.send(Quit())
            stream.close()
        task, self._task = self._task, None
        for t in [*self._side_tasks, *([task] if task is not None else [])]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    # -- connection loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            queue: asyncio.Queue[object] = asyncio.Queue()
            try:
                _, stream = await loop.create_connection(
                    functools.partial(self._make_stream, queue), self.host, self.port)
            except OSError as exc:
                delay = self.backoff.next()
                log.info("%s: cannot connect to %s:%d (%s); retrying in %.2f s", self.name,
                         self.host, self.port, exc.strerror or exc, delay)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self.connections += 1
            self.stream = stream
            worker = loop.create_task(self._worker(stream, queue), name=f"{self.name}-worker")
            try:
                try:
                    self._hello(stream)
                except ConnectionError as exc:
                    log.info("%s: connection lost during the handshake: %s", self.name, exc)
                else:
                    self.connected.set()
                    log.info("%s: connected to %s:%d as %s (%s)", self.name, self.host,
                             self.port, self.client_type.value, self.generation.name)
                self.last_close_reason = await stream.wait_closed()
            finally:
                self.connected.clear()
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
                if stream.is_open:
                    stream.close()
            if self._stopping:
                break
            delay = self.backoff.next()
            log.info("%s: server went away (%s); reconnecting in %.2f s", self.name,
                     self.last_close_reason or "closed", delay)
            await asyncio.sleep(delay)

    def _make_stream(self, queue: asyncio.Queue[object]) -> PyMoDAQStream:
        def on_message(stream: PyMoDAQStream, msg: object) -> None:
            if isinstance(msg, StopMotion):  # at once: it must interrupt a running move
                task = asyncio.get_running_loop().create_task(self._stop_motion())
                self._side_tasks.add(task)
                task.add_done_callback(self._side_tasks.discard)
            else:
                queue.put_nowait(msg)

        return PyMoDAQStream(Role.CLIENT, on_message=on_message, generation=self.generation,
                             dialect=self.dialect, detect_dialect=True,
                             max_message=self.max_message, name=self.name)

    def _hello(self, stream: PyMoDAQStream) -> None:
        stream.send(Hello(self.client_type))
        settings = self.device.settings() if callable(getattr(self.device, "settings", None)) \
            else {}
        stream.send(Infos(settings_to_xml(settings)))
        if self.generation is Generation.G1 and self.client_type is ClientType.GRABBER:
            for axis, (data, label, units) in self._axes().items():
                stream.send(AxisInfo(axis, np.asarray(data), label, units))

    def _axes(self) -> dict[str, tuple[np.ndarray, str, str]]:
        fn = getattr(self.device, "axes", None)
        return dict(fn()) if callable(fn) else {}

    async def _stop_motion(self) -> None:
        try:
            await self.device.stop_motion()
        except Exception:
            log.exception("%s: stop_motion failed", self.name)

    # -- commands ---------------------------------------------------------------------------------
    async def _worker(self, stream: PyMoDAQStream, queue: asyncio.Queue[object]) -> None:
        while True:
            msg = await queue.get()
            self.commands += 1
            try:
                reply = await self._execute(msg)
            except (ProtocolError, ConnectionError) as exc:
                log.warning("%s: cannot answer %s: %s", self.name, type(msg).__name__, exc)
                continue
            except Exception:
                log.exception("%s: %s failed on the device", self.name, type(msg).__name__)
                reply = await self._error_reply(msg)
            if reply is None or not stream.is_open:
                continue
            try:
                stream.send(reply)
            except ProtocolError as exc:  # e.g. an N-D array in dialect 1.6: our side's limit
                log.error("%s: cannot send %s: %s", self.name, type(reply).__name__, exc)
                continue
            except ConnectionError:
                return
            await stream.drain()

    async def _error_reply(self, msg: object) -> object | None:
        """A failed move still answers ``move_done`` with the actual position, so the server
        is not left waiting (the real client sent nothing and the server stalled, §9 #11)."""
        if isinstance(msg, MoveAbs | MoveRel | MoveHome):
            with contextlib.suppress(Exception):
                return MoveDone(float(await self.device.get_position()), self._units())
        return None

    def _units(self) -> str:
        return str(getattr(self.device, "units", "") or "")

    async def _execute(self, msg: object) -> object | None:
        dev = self.device
        if isinstance(msg, MoveAbs):
            return MoveDone(float(await dev.move_abs(msg.value)), self._units())
        if isinstance(msg, MoveRel):
            return MoveDone(float(await dev.move_rel(msg.value)), self._units())
        if isinstance(msg, MoveHome):
            return MoveDone(float(await dev.move_home()), self._units())
        if isinstance(msg, GetPosition):
            return PositionIs(float(await dev.get_position()), self._units())
        if isinstance(msg, SendData):
            arrays = [np.asarray(a) for a in await dev.grab()]
            if self.generation is Generation.G3:
                return Done(tuple(arrays), self._dte(arrays))
            return Done(tuple(arrays))
        if isinstance(msg, SetInfo):
            self._set_info(msg)
            return None
        if isinstance(msg, Info | Infos | InfoXml | Unknown):
            log.info("%s: server sent %r", self.name, msg)
            return None
        if isinstance(msg, Quit):
            log.info("%s: server asked us to quit", self.name)
            if self.stream is not None:
                self.stream.close()
            return None
        log.warning("%s: unexpected %r", self.name, msg)
        return None

    def _dte(self, arrays: list[np.ndarray]) -> Any:
        axes = tuple(Axis(label=label, units=units, data=np.asarray(data), index=i)
                     for i, (data, label, units) in enumerate(self._axes().values()))
        name = str(getattr(self.device, "name", "detector"))
        dfp = data_from_plugins(name, arrays, units=self._units(), axes=axes)
        return data_to_export(name, [dfp])

    def _set_info(self, msg: SetInfo) -> None:
        setter = getattr(self.device, "set_setting", None)
        values = xml_values(msg.xml)
        if not values:
            log.warning("%s: set_info %s with unreadable XML", self.name, "/".join(msg.path))
            return
        for name, value in values.items():
            try:
                if setter is None:
                    raise KeyError(name)
                setter(name, value)
                log.info("%s: set_info %s = %s", self.name, name, value)
            except (KeyError, ValueError) as exc:
                log.warning("%s: set_info %s=%r refused: %s", self.name, name, value, exc)
