"""Client proxies of the hardware nodes: furnace, laser, Qtegra spectrometer, legacy relay.

Each makes a remote instrument look local (ARCHITECTURE.md, "one device model, many wire
faces"). The furnace and laser proxies ride on :class:`PychronClient` (so they inherit its
framings and its rule of re-sending only idempotent requests); the Qtegra proxy speaks plain
text over UDP (the real default) or one-shot TCP; the relay client reads F-CRC frames and
verifies their CRC. Blocking versions for scripts are built with :class:`Blocking`.

Errors: a reply starting ``ERROR``/``Error:`` raises
:class:`~labbridge.links.pychron.client.ErrorReply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from typing import Any

from labbridge.links.pychron.client import (
    ErrorReply,
    NoReply,
    PychronClient,
    PychronClientError,
    UnknownCommand,
    Unreachable,
)
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.pychron.messages import is_error_reply, to_bool
from labbridge.protocol.pychron.relay import CrcReply, CrcReplyDecoder
from labbridge.transport.blocking import BlockingPortal


def _bool(reply: str) -> bool:
    value = to_bool(reply)
    if value is None:
        raise ErrorReply(reply)
    return value


class _Proxy:
    """Common part: owns or borrows a :class:`PychronClient`."""

    def __init__(self, client: PychronClient) -> None:
        self.client = client

    async def call(self, request: str) -> str:
        return await self.client.call(request)

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RemoteFurnace(_Proxy):
    """A furnace node (furPi vocabulary, spec 8.2)."""

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> RemoteFurnace:
        return cls(PychronClient(host, port, **kw))

    async def temperature(self) -> float:
        return float(await self.call("GetTemperature"))

    async def setpoint(self) -> float:
        return float(await self.call("GetSetpoint"))

    async def set_setpoint(self, value: float) -> None:
        _bool(await self.call(f"SetSetpoint {value}"))

    async def percent_output(self) -> float:
        return float(await self.call("GetPercentOutput"))

    async def summary(self, h2o_channel: str | None = None) -> dict[str, Any]:
        req = {"command": "GetFurnaceSummary"}
        if h2o_channel:
            req["h2o_channel"] = h2o_channel
        result: dict[str, Any] = json.loads(await self.call(json.dumps(req)))
        return result

    async def set_pid(self, kp: float, ki: float, kd: float) -> None:
        _bool(await self.call(f"SetPID {kp},{ki},{kd}"))

    async def version(self) -> str:
        return await self.call("GetVersion")

    async def di_state(self, channel: str) -> bool:
        return _bool(await self.call(f"GetDIState {channel}"))

    async def channel_state(self, name: str) -> bool:
        return _bool(await self.call(f"GetChannelState {name}"))


class RemoteLaser(_Proxy):
    """A laser node (spec 9)."""

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> RemoteLaser:
        return cls(PychronClient(host, port, **kw))

    async def enable(self) -> None:
        _bool(await self.call("Enable"))

    async def disable(self) -> None:
        _bool(await self.call("Disable"))

    async def set_power(self, percent: float) -> None:
        _bool(await self.call(f"SetLaserPower {percent}"))

    async def read_power(self) -> float:
        return float(await self.call("ReadLaserPower"))

    async def move_to(self, x: float, y: float) -> None:
        _bool(await self.call(f"SetXY {x},{y}"))

    async def set_z(self, z: float) -> None:
        _bool(await self.call(f"SetZ {z}"))

    async def position(self) -> tuple[float, float, float]:
        x, y, z = (float(v) for v in (await self.call("GetPosition")).split(","))
        return x, y, z

    async def goto_hole(self, hole: int | str, autocenter: bool = False) -> None:
        _bool(await self.call(f"GoToHole {hole},{autocenter}"))

    async def moving(self) -> bool:
        return _bool(await self.call("GetDriveMoving"))

    async def wait_stopped(self, poll: float = 0.05, timeout: float = 60.0) -> None:
        """Poll ``GetDriveMoving`` until the stage stops (the real client polls too)."""
        async with asyncio.timeout(timeout):
            while await self.moving():  # noqa: ASYNC110 - remote state: polling is the API
                await asyncio.sleep(poll)

    async def abort(self) -> None:
        _bool(await self.call("AbortPattern"))


class QtegraSpectrometer(_Proxy):
    """Thermo Qtegra RemoteControlServer client (spec 12): UDP by default, plain text."""

    @classmethod
    def connect(cls, host: str, port: int = 1069, *, udp: bool = True,
                **kw: Any) -> QtegraSpectrometer:
        return cls(PychronClient(host, port, framing="plain", udp=udp, **kw))

    async def data(self) -> dict[str, float]:
        """Last scan as ``{detector: value}`` (tagged ``det,value,...``); {} before any."""
        try:
            reply = await self.call("GetData")
        except UnknownCommand:
            return {}  # TCP: an empty reply before the first scan is a bare close
        items = [s for s in reply.split(",") if s != ""]
        if len(items) % 2:
            raise ErrorReply(f"untagged or odd GetData reply: {reply[:80]!r}")
        return {items[i]: float(items[i + 1]) for i in range(0, len(items), 2)}

    async def integration_time(self) -> float:
        return float(await self.call("GetIntegrationTime"))

    async def set_integration_time(self, seconds: float) -> None:
        _bool(await self.call(f"SetIntegrationTime {seconds}"))

    async def magnet_dac(self) -> float:
        return float(await self.call("GetMagnetDAC"))

    async def set_magnet_dac(self, value: float) -> None:
        _bool(await self.call(f"SetMagnetDAC {value}"))

    async def magnet_moving(self) -> bool:
        return _bool(await self.call("GetMagnetMoving"))

    async def blank_beam(self, blank: bool) -> None:
        _bool(await self.call(f"BlankBeam {blank}"))

    async def deflection(self, detector: str) -> float:
        return float(await self.call(f"GetDeflection {detector}"))

    async def set_deflection(self, detector: str, value: float) -> None:
        _bool(await self.call(f"SetDeflection {detector},{value}"))

    async def gain(self, detector: str) -> float:
        return float(await self.call(f"GetGain {detector}"))

    async def parameter(self, name: str) -> str:
        return await self.call(f"GetParameter {name}")

    async def set_parameter(self, name: str, value: object) -> None:
        _bool(await self.call(f"SetParameter {name},{value}"))

    async def high_voltage(self) -> float:
        return float(await self.call("GetHighVoltage"))

    async def set_high_voltage(self, volts: float) -> None:
        _bool(await self.call(f"SetHighVoltage {volts}"))

    async def open(self, valve: str) -> None:
        _bool(await self.call(f"Open {valve}"))

    async def close_valve(self, valve: str) -> None:
        _bool(await self.call(f"Close {valve}"))

    async def valve_state(self, valve: str) -> bool:
        return _bool(await self.call(f"GetValveState {valve}"))


class RelayClient:
    """Client of a legacy RemoteHardwareServer: reply frames are F-CRC + ``\\n``.

    One TCP connection per request (reply read until the server closes), or one UDP datagram.
    The CRC is verified (:class:`~labbridge.protocol.pychron.crc.ChecksumMismatch` otherwise).
    A reply that is not framed at all (a real legacy repeater's own ``ERROR 011``) is returned
    as it is. ``True`` from a legacy processor is returned unchanged; :func:`to_bool` reads it.
    """

    def __init__(self, host: str, port: int, *, udp: bool = False, timeout: float = 2.0,
                 terminator: bytes = b"\r\n") -> None:
        self.host = host
        self.port = port
        self.udp = udp
        self.timeout = timeout
        self.terminator = terminator
        self._raw = PychronClient(host, port, framing="plain", udp=udp, timeout=timeout,
                                  retries=0, terminator=terminator)

    def __repr__(self) -> str:
        return f"<RelayClient {self.host}:{self.port} {'udp' if self.udp else 'tcp'}>"

    @staticmethod
    def decode(raw: str) -> str:
        text = raw.strip("\r\n")
        if not text:
            raise UnknownCommand("empty reply")
        if is_error_reply(text):
            return text  # unframed error of a real legacy repeater
        dec = CrcReplyDecoder()
        dec.receive_data(text.encode("utf-8"))
        ev = dec.next_event()
        if ev is NEED_DATA:
            raise ProtocolError(f"truncated reply frame {text[:40]!r}")
        assert isinstance(ev, CrcReply)
        return ev.data

    async def ask(self, request: str) -> str:
        """Reply text (frame removed, CRC checked); errors are returned as text."""
        raw = await self._raw.ask(request, idempotent=False)
        return self.decode(raw)

    async def call(self, request: str) -> str:
        reply = await self.ask(request)
        if is_error_reply(reply):
            raise ErrorReply(reply)
        return reply

    async def ready(self) -> bool:
        """``PychronReady``: True when the whole chain answers."""
        return await self.ask("PychronReady") == "OK"

    async def close(self) -> None:
        await self._raw.close()

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Blocking:
    """Blocking facade of any of the async proxies above (one private loop per facade).

    ``with Blocking(RemoteFurnace.connect, "10.0.0.7", 1061) as furnace:
    furnace.set_setpoint(600)``. Attribute access returns a function that runs the proxy's
    coroutine method on the portal's loop and waits for its result; :meth:`close` closes the
    proxy (its ``close()``), then the loop.
    """

    def __init__(self, factory: Any, *args: Any, **kw: Any) -> None:
        self._portal = BlockingPortal()

        async def build() -> Any:
            return factory(*args, **kw)

        self._proxy = self._portal.call(build)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)  # never forward our own internals (half-built facade)
        attr = getattr(self._proxy, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def run(*args: Any, **kw: Any) -> Any:
            return self._run(attr, *args, **kw)

        return run

    def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self._portal.call(functools.partial(fn, *args, **kw))

    def _closer(self) -> Any:
        """The coroutine function that closes the proxy (subclasses may choose another)."""
        return self._proxy.close

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self._portal.call(self._closer())
        finally:
            self._portal.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Blocking", "ErrorReply", "NoReply", "PychronClientError", "QtegraSpectrometer",
           "RelayClient", "RemoteFurnace", "RemoteLaser", "Unreachable"]
