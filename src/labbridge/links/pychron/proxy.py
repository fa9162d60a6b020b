"""A remote valve node seen as a local device on the acquisition node.

:class:`RemoteValveBankProxy` is fed by a :class:`StatusMonitor`: every change the monitor
sees (by poll or by push) is emitted as a :class:`~labbridge.devices.base.Change` in the same
shape a local :class:`~labbridge.devices.valves.ValveBank` uses, so the bus, the recorder and
the web page show remote valves exactly like local ones.
"""

from __future__ import annotations

from typing import Any

from labbridge.devices.base import Device
from labbridge.links.pychron.monitor import StatusMonitor, ValveView
from labbridge.links.pychron.remote import Actuation, RemoteValves


class RemoteValveBankProxy(Device):
    kind = "remote_valve_bank"

    def __init__(self, name: str, remote: RemoteValves, monitor: StatusMonitor) -> None:
        super().__init__(name)
        self.remote = remote
        self.monitor = monitor
        self.status = "starting"

    def on_change(self, old: ValveView | None, new: ValveView) -> None:
        self.emit(new.name, {"state": int(bool(new.state)), "locked": int(bool(new.locked)),
                             "owner": new.owner or ""}, ts=new.ts or None)

    def on_status(self, status: str, detail: str) -> None:
        self.status = status
        self.emit("status", {"status": status, "detail": detail})

    @property
    def names(self) -> list[str]:
        return list(self.monitor.valves)

    def snapshot(self) -> dict[str, Any]:
        return {n: {"state": int(bool(v.state)), "locked": int(bool(v.locked)),
                    "owner": v.owner or ""} for n, v in self.monitor.valves.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "target": f"{self.remote.client.host}:"
                f"{self.remote.client.port}", "valves": self.names, "status": self.status}

    async def open(self, name: str) -> Actuation:
        act = await self.remote.open(name)
        self.monitor.push(name, state=act.state)
        return act

    async def close(self, name: str) -> Actuation:
        act = await self.remote.close(name)
        self.monitor.push(name, state=act.state)
        return act
