"""A small simulated lab built in-process for the web tests (issue 8 "what it must show"):
a valve node (valve bank, ion gauge + Pychron command server + notifier/DevicePublisher +
DashboardServer with a warning conditional + recorder), a
furnace node (furnace + command server + notifier) and a dashboard node (``web_dashboard``
subscribed to both notifiers, sending control actions to both command servers).

Every port is 0; the dashboard's node file is written once the other two listen, with their
real ports. Heartbeats are fast and ``stale_after`` short so a stopped node turns stale in
well under a second of test time, and disconnected (nothing at all) after 2 s; device
metadata (units) is repeated every 0.3 s. Valve D may not open while A is open (an
interlock); the ion gauge above 1e-7 torr is a critical alarm; the valve node's line is
drawn from the dashboard's ``schematic``.

The dashboard node's ``security`` section (issue 12): 127.0.0.1 is admin and 127.0.0.2 an
observer (so a visitor without a login is an observer on the page from either), 127.0.0.3 has
no role; five failed logins a minute per address; and three identities: ``olivia`` (operator, password),
``oscar`` (observer, password) and ``robot`` (operator, API token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from labbridge.access import hash_secret
from labbridge.devices.furnace import Furnace
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.server import PychronCommandServer
from labbridge.node.kinds.web import WebDashboardService
from labbridge.node.node import Node, build_node

VALVE_NODE = """
node: valve-controller
devices:
  - kind: valve_bank
    name: valves
    persist: false
    backend: {kind: sim, delay: 0.0}
    valves:
      - {name: A, address: 0, description: "sample inlet", layout: {x: 0, y: 0}}
      - {name: B, address: 1, description: "getter", layout: {x: 1, y: 0}}
      - {name: C, address: 2, description: "pipette", layout: {x: 2, y: 0}}
      - {name: D, address: 3, description: "turbo pump", interlock: [A]}
  - {kind: gauge_controller, name: gauges, gauges: [IG, CG1], backend: {kind: sim}}
services:
  - {kind: pychron_command_server, name: cmd, host: 127.0.0.1, port: 0}
  - {kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.1, meta_period: 0.3}
  - {kind: dashboard_server, name: dash, config: dashboard.yaml, host: 127.0.0.1, port: 0,
     heartbeat: 0.1}
  - {kind: recorder, name: rec, connect: [bus], path: rec.sqlite, flush_interval: 0.05}
"""

#: The valve node's DashboardServer: the ion gauge sampled every 0.1 s, a warning once it
#: has read above zero (it always does) eight times in a row, 0.8 s after start: late enough
#: for the dashboard node to have subscribed (PUB/SUB drops what is sent before a join).
DASHBOARD = """
devices:
  - name: Line gauges
    device: gauges
    values:
      - name: IG
        func_name: pressure IG
        period: 0.1
        units: torr
        enabled: true
        conditionals:
          - [10, {teststr: "x>0", nfail: 8}]
"""

FURNACE_NODE = """
node: furnace-controller
devices:
  - {kind: furnace, name: furnace, setpoint: 22, time_scale: 20, tick: 0.05, seed: 1,
     watchdog: {timeout: 0}}
services:
  - {kind: pychron_command_server, name: cmd, host: 127.0.0.1, port: 0}
  - {kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.1, meta_period: 0.3}
"""

OPERATOR = ("olivia", "olivia's long password")
OBSERVER = ("oscar", "oscar's long password")
TOKEN = "robot-token-0123456789-abcdefghijklmnop"

WEB_NODE = """
node: dashboard
security:
  addresses: {{admin: [127.0.0.1], observer: [127.0.0.2]}}    # 127.0.0.3: nobody
  identities:
    olivia: {{role: operator, password: "{olivia}"}}
    oscar: {{role: observer, password: "{oscar}"}}
    robot: {{role: operator, token: "{robot}"}}
devices:
  - {{kind: camera, name: cam, width: 960, height: 720, dtype: uint16, sigma: 60,
     backend: {{kind: sim}}}}
services:
  - kind: web_dashboard
    name: web
    host: 127.0.0.1
    port: 0
    title: Test lab
    control: {control}
    stale_after: 0.6
    disconnect_after: 2
    history_minutes: 1
    subscribe: [{valve_bus}, {valve_dash}, {furnace_bus}]
    command_servers:
      - {{node: valve-controller, url: "127.0.0.1:{valve_cmd}"}}
      - {{node: furnace-controller, url: "127.0.0.1:{furnace_cmd}"}}
    recorder: {recorder}
    cameras: [{{device: cam, every: 0.2}}]
    ping_interval: 1
    login_attempts_per_minute: 5
    alarms:
      - {{topic: valve-controller.gauges.IG, above: 1.0e-7, level: critical}}
    schematic:
      valve-controller:
        valves: {{A: [1, 0], B: [2, 0], C: [3, 0], D: [2, 1]}}
        gauges: {{IG: [3, -1], CG1: [1, -1]}}
        parts: {{sample: [0, 0], pipette: [4, 0], pump: [3, 1]}}
        pipes: [[sample, A, B, C, pipette], [B, D, pump], [C, IG], [A, CG1]]
"""


def _service(node: Node, name: str) -> Any:
    return node.ctx.services[name]


@dataclass
class Lab:
    valves_node: Node
    furnace_node: Node
    web_node: Node

    @property
    def bank(self) -> ValveBank:
        dev = self.valves_node.ctx.devices["valves"]
        assert isinstance(dev, ValveBank)
        return dev

    @property
    def furnace(self) -> Furnace:
        dev = self.furnace_node.ctx.devices["furnace"]
        assert isinstance(dev, Furnace)
        return dev

    @property
    def web(self) -> WebDashboardService:
        svc = _service(self.web_node, "web")
        assert isinstance(svc, WebDashboardService)
        return svc

    @property
    def url(self) -> str:
        return self.web.url

    @property
    def gate(self) -> Any:
        """The dashboard node's gate (its audit trail: ``gate.recent``)."""
        return self.web_node.ctx.gate

    def cmd_port(self, node: Node) -> int:
        svc = _service(node, "cmd")
        assert isinstance(svc, PychronCommandServer) and svc.port
        return int(svc.port)

    async def stop(self) -> None:
        for n in (self.web_node, self.furnace_node, self.valves_node):
            await n.stop()


async def start_lab(tmp: Path, *, control: bool = True,
                    before_web: Callable[[Path], None] | None = None) -> Lab:
    """Build and start the three nodes; the caller must ``await lab.stop()``.
    ``before_web(recorder file)`` runs once the valve node records, before the dashboard
    starts (to give it a past)."""
    (tmp / "valves.yaml").write_text(VALVE_NODE)
    (tmp / "dashboard.yaml").write_text(DASHBOARD)
    (tmp / "furnace.yaml").write_text(FURNACE_NODE)
    valves = build_node(tmp / "valves.yaml")
    furnace = build_node(tmp / "furnace.yaml")
    started: list[Node] = []
    try:
        for n in (valves, furnace):
            await n.start()
            started.append(n)
        rec = _service(valves, "rec")
        if before_web is not None:
            before_web(Path(rec.path))
        text = WEB_NODE.format(
            control="true" if control else "false",
            valve_bus=_service(valves, "bus").pub_url,
            valve_dash=_service(valves, "dash").pub_url,
            furnace_bus=_service(furnace, "bus").pub_url,
            valve_cmd=_service(valves, "cmd").port, furnace_cmd=_service(furnace, "cmd").port,
            recorder=str(rec.path), **_hashes())
        (tmp / "web.yaml").write_text(text)
        web = build_node(tmp / "web.yaml")
        await web.start()
    except BaseException:
        for n in reversed(started):
            await n.stop()
        raise
    return Lab(valves, furnace, web)


_HASHES: dict[str, str] = {}


def _hashes() -> dict[str, str]:
    """The identities' hashes (scrypt is slow on purpose: made once per test run)."""
    if not _HASHES:
        _HASHES.update(olivia=hash_secret(OPERATOR[1]), oscar=hash_secret(OBSERVER[1]),
                       robot=hash_secret(TOKEN, kind="token"))
    return _HASHES


def http_session(url: str, **kw: Any) -> aiohttp.ClientSession:
    """A client that keeps the dashboard's cookie (aiohttp's default jar drops cookies of
    IP-address hosts such as 127.0.0.1)."""
    return aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True), **kw)


async def login(http: aiohttp.ClientSession, user: str, password: str) -> dict[str, str]:
    """Log ``http`` in; returns the headers its state-changing requests need (the CSRF
    token)."""
    r = await http.post("/api/login", json={"user": user, "password": password})
    assert r.status == 200, await r.text()
    me = await (await http.get("/api/session")).json()
    assert me["identity"] == user and me["csrf"]
    return {"X-CSRF-Token": me["csrf"]}
