"""Device metadata on the bus (``<node>.<device>.meta``): what a dashboard needs to show a
signal honestly (units, quantity, held or sampled), repeated so a late subscriber learns it."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from labbridge.bus.device_publisher import DevicePublisher, device_meta
from labbridge.bus.notifier import Notifier
from labbridge.bus.subscriber import Subscriber
from labbridge.devices.backends.sim import SimGaugeBackend
from labbridge.devices.gauges import GaugeController
from labbridge.node.node import build_node
from tests.bus.helpers import Thing


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, value: Any, ts: float | None = None, *,
                copy: bool = True) -> int:
        if isinstance(value, dict) and "bad" in value.get("describe", {}):
            raise TypeError("cannot encode")
        self.sent.append((topic, value))
        return 1

    def publish_legacy(self, line: bytes) -> None:
        pass


class Odd(Thing):
    kind = "odd"

    def describe(self) -> dict[str, Any]:
        return {"bad": object()}

    def snapshot(self) -> dict[str, Any]:
        return {"x": 1.5, "nan": math.nan, "arr": [1, 2], "s": "on"}


def test_meta_has_signals_description_and_scalar_snapshot():
    g = GaugeController("gauges", ["IG", "CG1"], SimGaugeBackend({"IG": "ion", "CG1": "convectron"}))
    meta = device_meta(g)
    assert meta["kind"] == "gauge_controller"
    assert meta["signals"] == {"*": {"units": "torr", "quantity": "pressure"}}
    assert meta["describe"]["gauges"] == ["IG", "CG1"]
    assert meta["snapshot"] == {"IG": None, "CG1": None}
    odd = device_meta(Odd("o"))
    assert odd["snapshot"] == {"x": 1.5, "s": "on"}  # NaN and a list are left out


def test_publish_meta_one_topic_per_device_and_a_bad_one_logged_once(caplog):
    sink = Sink()
    dp = DevicePublisher(sink, "lab", [Thing("a"), Odd("o")])
    caplog.set_level(logging.WARNING, logger="labbridge.bus.device_publisher")
    dp.publish_meta()
    dp.publish_meta()
    assert [t for t, _ in sink.sent] == ["lab.a.meta", "lab.a.meta"]
    warnings = [r for r in caplog.records if "metadata of o" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_late_subscriber_gets_the_metadata_from_the_notifier_service(tmp_path):
    """A node's notifier repeats the metadata every meta_period: a subscriber that joined
    after the first one still learns the units."""
    (tmp_path / "n.yaml").write_text(
        "node: lab\n"
        "devices:\n"
        "  - {kind: gauge_controller, name: gauges, gauges: [IG], backend: {kind: sim}}\n"
        "services:\n"
        "  - {kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0,"
        " meta_period: 0.1}\n")
    node = build_node(tmp_path / "n.yaml")
    await node.start()
    try:
        sub = Subscriber(node.ctx.services["bus"].pub_url, ["lab.gauges.meta"])
        await sub.start()
        try:
            topic, value, _ = await sub.wait_for(timeout=10)
        finally:
            await sub.stop()
    finally:
        await node.stop()
    assert topic == "lab.gauges.meta"
    assert value["signals"]["*"]["units"] == "torr" and value["describe"]["gauges"] == ["IG"]


async def test_meta_period_zero_publishes_none():
    from labbridge.node.kinds.bus import NotifierService

    async def calls(period: float) -> list[str]:
        n = Notifier(port=0, node="lab", heartbeat=None)
        seen: list[str] = []
        dp = DevicePublisher(n, "lab", [Thing("a")])
        dp.publish_meta = lambda: seen.append("x")  # type: ignore[method-assign]
        svc = NotifierService("bus", n, dp, meta_period=period)
        await svc.start()
        try:
            await asyncio.sleep(0)  # the meta task (if any) runs its first round
        finally:
            await svc.stop()
        return seen

    assert await calls(60.0) == ["x"]  # published at start, then every period
    assert await calls(0) == []
