"""Kinds of devices and services a node file may ask for.

Each protocol family registers its factories in ``labbridge.node.kinds.<family>``; the node
supervisor looks kinds up here. A factory receives its :class:`~labbridge.node.config.Section`
and the :class:`NodeContext` and returns a device or a service; it reads every setting through
the section's typed getters so a bad value names its file, line and field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from labbridge.access import Gate
from labbridge.devices.base import Device
from labbridge.node.config import Section
from labbridge.transport.endpoint import Endpoint as Endpoint


@runtime_checkable
class Service(Protocol):
    """A running part of a node: a server, a client link, a publisher, a recorder."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> list[Endpoint]: ...


@dataclass
class NodeContext:
    """What factories may use: the node's name, its devices, and where files go."""

    node_name: str
    config_dir: Path
    state_dir: Path
    devices: dict[str, Device] = field(default_factory=dict)
    #: Services already built, by name (a factory may look up one it depends on).
    services: dict[str, Any] = field(default_factory=dict)
    #: Host override from the command line (``labbridge serve --host``), or None.
    host_override: str | None = None
    #: Port override from the command line (applies to the node's first command server).
    port_override: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The node's access gate (its ``security`` section): every link checks state-changing
    #: requests here and every change or refusal is audited here (docs/adr/0100).
    gate: Gate = field(default_factory=Gate)

    def device(self, section: Section, key: str, kind: type[Device] | None = None) -> Device:
        """Resolve a device reference (by name) from a config field."""
        name = section.get_str(key)
        dev = self.devices.get(name)
        if dev is None:
            known = ", ".join(sorted(self.devices)) or "none"
            raise section.error(key, f"no device named {name!r} on this node (devices: {known})")
        if kind is not None and not isinstance(dev, kind):
            raise section.error(key, f"device {name!r} is a {dev.kind}, expected {kind.kind}")
        return dev

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.config_dir / p


DeviceFactory = Callable[[Section, NodeContext], Device]
ServiceFactory = Callable[[Section, NodeContext], Service]

DEVICE_KINDS: dict[str, DeviceFactory] = {}
SERVICE_KINDS: dict[str, ServiceFactory] = {}


def register_device(kind: str) -> Callable[[DeviceFactory], DeviceFactory]:
    def deco(factory: DeviceFactory) -> DeviceFactory:
        if kind in DEVICE_KINDS:
            raise ValueError(f"device kind {kind!r} registered twice")
        DEVICE_KINDS[kind] = factory
        return factory

    return deco


def register_service(kind: str) -> Callable[[ServiceFactory], ServiceFactory]:
    def deco(factory: ServiceFactory) -> ServiceFactory:
        if kind in SERVICE_KINDS:
            raise ValueError(f"service kind {kind!r} registered twice")
        SERVICE_KINDS[kind] = factory
        return factory

    return deco
