"""Node-file service kinds (notifier, dashboard_server, recorder, dashboard_client) and the
`labbridge watch` / `labbridge record` commands as subprocesses."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from labbridge.bus.publisher import Publisher
from labbridge.bus.recorder import RecordStore
from labbridge.bus.subscriber import Subscriber
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "dashboard.yaml"

NODE = f"""
node: lab
devices:
  - {{kind: gauge_controller, name: gauges, gauges: [IG, CG1], backend: {{kind: sim}}}}
services:
  - {{kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.1}}
  - {{kind: dashboard_server, name: dash, config: "{EXAMPLE}", host: 127.0.0.1, port: 0,
     heartbeat: 0.1}}
  - {{kind: recorder, name: rec, connect: [bus, dash], path: rec.sqlite, flush_interval: 0.05}}
"""


async def test_node_with_bus_services(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(NODE)
    node = build_node(cfg)
    await node.start()
    try:
        eps = {(e.service, e.protocol): e for e in node.endpoints()}
        assert {("bus", "zmq-pub"), ("bus", "zmq-rep"), ("dash", "zmq-pub"),
                ("dash", "zmq-rep"), ("rec", "zmq-sub")} <= set(eps)
        assert eps[("bus", "zmq-pub")].port != eps[("bus", "zmq-rep")].port
        dash = node.ctx.services["dash"]
        sub = Subscriber(dash.pub_url, ["lab.dashboard."])
        await sub.start()
        try:
            # the example samples the simulated ion gauge every 2 s
            _, ev, _ = await sub.wait_for(
                lambda t, p, m: t == "lab.dashboard.value.Ion_Gauge.pressure", timeout=15)
        finally:
            await sub.stop()
        # the gauge read announces a Change, which the notifier publishes
        rec = node.ctx.services["rec"].recorder
        await rec.subscriber.wait_for(lambda t, p, m: t == "lab.gauges.IG", timeout=15)
    finally:
        await node.stop()
    assert ev["tag"] == "<Ion Gauge,pressure>" and ev["units"] == "torr"
    assert isinstance(ev["value"], float)
    store = RecordStore(tmp_path / ".labbridge-state" / "lab" / "rec.sqlite", readonly=True)
    try:
        topics = dict(store.topics())
    finally:
        store.close()
    assert "lab.gauges.IG" in topics and "lab.notifier.heartbeat" in topics
    assert "lab.dashboard.event.heartbeat" in topics


@pytest.mark.parametrize("service, message", [
    ("{kind: dashboard_server, config: missing.yaml}", "cannot read file"),
    ("{kind: dashboard_server, config: dash.yaml}", "no device named 'nope'"),
    ("{kind: dashboard_server, config: bad.yaml}", "bad.yaml:4: devices[0].values[0].period"),
    ("{kind: recorder, connect: [not-a-service]}", "connect"),
    ("{kind: recorder, connect: []}", "at least one"),
    ("{kind: notifier, port: 99999}", "port"),
    ("{kind: notifier, devices: [ghost]}", "no device named 'ghost'"),
    ("{kind: notifier, heartbeat: 1, colour: red}", "unknown field 'colour'"),
])
def test_bad_service_configs_name_file_and_field(tmp_path, service, message):
    (tmp_path / "dash.yaml").write_text(
        "devices: [{name: D, device: nope, values: [{name: v, enabled: true}]}]\n")
    (tmp_path / "bad.yaml").write_text(
        "devices:\n  - name: D\n    device: gauges\n    values: [{name: v, period: -2}]\n")
    cfg = tmp_path / "node.yaml"
    cfg.write_text("node: lab\ndevices:\n  - {kind: gauge_controller, name: gauges, "
                   f"gauges: [IG]}}\nservices:\n  - {service}\n")
    with pytest.raises(ConfigError) as ei:
        build_node(cfg)
    assert message in str(ei.value)


async def _run_cli_while_publishing(args: list[str], pub: Publisher, topic: str):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labbridge", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    done = asyncio.ensure_future(proc.communicate())
    try:
        i = 0
        while not done.done():   # PUB/SUB is lossy at join: publish until the CLI is satisfied
            pub.publish(topic, {"i": i})
            i += 1
            await asyncio.wait([done], timeout=0.02)
        out, err = done.result()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


async def test_watch_cli():
    pub = Publisher(port=0)
    pub.open()
    try:
        pub.publish("lab.other.x", 1)
        code, out, err = await asyncio.wait_for(_run_cli_while_publishing(
            ["watch", pub.url, "lab.valves.", "--count", "3"], pub, "lab.valves.A"), 30)
    finally:
        pub.close()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and all(" lab.valves.A #" in ln for ln in lines)
    assert json.loads(lines[0].split(" ", 3)[3]).keys() == {"i"}
    assert "joined late" in err   # the first messages went out before it connected


async def test_record_cli(tmp_path):
    db = tmp_path / "cli.sqlite"
    pub = Publisher(port=0)
    pub.open()
    try:
        code, _, err = await asyncio.wait_for(_run_cli_while_publishing(
            ["record", pub.url, "--db", str(db), "--count", "5"], pub, "lab.rec.v"), 30)
    finally:
        pub.close()
    assert code == 0, err
    assert "stored" in err
    store = RecordStore(db, readonly=True)
    try:
        rows = store.query("lab.rec.v")
    finally:
        store.close()
    assert len(rows) >= 5
    seqs = [r.seq for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_watch_bad_endpoint(capsys):
    from labbridge.cli import main

    assert main(["watch", "nohost"]) == 2


async def test_dashboard_client_service_waits_for_a_late_server(tmp_path):
    from labbridge.bus.dashboard import DashboardServer
    from labbridge.protocol.telemetry.dashboard_config import parse_dashboard_config

    cfg = parse_dashboard_config({"devices": [{"name": "D", "device": "d", "values": [
        {"name": "v", "enabled": True}]}]}, "x")
    probe = DashboardServer(cfg, remote=lambda d, f: 1.0, port=0)
    await probe.start()
    port = probe.port
    await probe.stop()               # nothing listens on port / port+1 now
    (tmp_path / "client.yaml").write_text(
        f"node: crunch\nservices:\n  - {{kind: dashboard_client, name: dc, host: 127.0.0.1, "
        f"port: {port}, rep_port: {probe.rep_port}}}\n")
    node = build_node(tmp_path / "client.yaml")
    await node.start()               # does not fail: the server is not up yet
    server = None
    try:
        svc = node.ctx.services["dc"]
        assert not svc.client.connected.is_set()
        for _ in range(500):         # let one attempt fail first (ping times out after 1 s)
            if svc.attempts >= 2:
                break
            await asyncio.sleep(0.02)
        server = DashboardServer(cfg, remote=lambda d, f: 1.0, port=port,
                                 rep_port=probe.rep_port, node="lab")
        for _ in range(250):         # the OS may hold the port briefly; no event to wait on
            try:
                await server.start()
                break
            except Exception:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(svc.client.connected.wait(), 30)
        assert svc.attempts >= 2
        assert svc.client.config["node"] == "lab"
    finally:
        await node.stop()
        if server is not None:
            await server.stop()
