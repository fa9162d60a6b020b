"""Dashboard: the dashboard.yaml model, conditional logic (pure), and the server/client over
real loopback sockets (spec pychron.md §14)."""

from __future__ import annotations

import asyncio
import json

import pytest

from labbridge.bus.dashboard import DashboardClient, DashboardError, DashboardServer
from labbridge.bus.subscriber import Subscriber
from labbridge.node.config import parse_yaml
from labbridge.protocol.telemetry.dashboard import (
    CriticalEvent,
    ErrorEvent,
    Heartbeat,
    TimeoutEvent,
    ValueMonitor,
    ValueUpdate,
    WarningEvent,
    event_from_json,
    event_topic,
)
from labbridge.protocol.telemetry.dashboard_config import (
    DashboardConfigError,
    Severity,
    parse_dashboard_config,
)
from labbridge.protocol.telemetry.expr import ExpressionError, compile_test
from tests.bus.helpers import Thing

GAUGE_YAML = """
port: 8100
devices:
  - name: Bone Gauge
    device: gauge
    values:
      - name: pressure
        func_name: read
        period: 0.02
        enabled: true
        units: torr
        threshold: 0
        conditionals:
          - [10, {teststr: "x>10", nfail: 2}]
          - [20, {teststr: "x>20", nfail: 3, script: "close_all.py"}]
"""


# -- model -------------------------------------------------------------------------------------
def test_config_defaults_and_aliases():
    cfg = parse_dashboard_config(parse_yaml("""
- name: Env
  device: env_ctrl
  use: false
  values:
    - name: temperature
    - {name: humidity, func: get_h, period: on_change, change_threshold: 0.5, bind: rh,
       enabled: yes}
""", "d.yaml"), "d.yaml")
    assert cfg.port == 8100 and cfg.source_path == "d.yaml"
    env = cfg.devices[0]
    assert env.enabled is False
    t, h = env.values
    assert (t.tag, t.func_name, t.period, t.enabled, t.threshold, t.timeout, t.units) == (
        "<Env,temperature>", "get", 60.0, False, 1e-20, 60.0, "")
    assert (h.func_name, h.on_change, h.threshold, h.bindname, h.enabled) == (
        "get_h", True, 0.5, "rh", True)
    snap = cfg.to_json()
    assert snap["devices"][0]["values"][1]["period"] == "on_change"
    json.dumps(snap)


def test_conditionals_parsed():
    cfg = parse_dashboard_config(parse_yaml(GAUGE_YAML, "g.yaml"), "g.yaml")
    w, c = cfg.devices[0].values[0].conditionals
    assert (w.severity, w.teststr, w.nfail) == (Severity.WARNING, "x>10", 2)
    assert (c.severity, c.nfail, c.script) == (Severity.CRITICAL, 3, "close_all.py")
    alt = parse_dashboard_config({"devices": [{"name": "D", "device": "d", "values": [
        {"name": "v", "conditionals": [{"severity": "critical", "teststr": "x<1"}]}]}]})
    assert alt.devices[0].values[0].conditionals[0].severity is Severity.CRITICAL


@pytest.mark.parametrize("text, field, line", [
    ("devices: []", "devices", 1),
    ("- {device: d, values: [{name: v}]}", "devices[0].name", 1),
    ("- name: D\n  device: d\n  values:\n    - {name: v, period: -1}", "devices[0].values[0].period", 4),
    ("- name: D\n  device: d\n  values:\n    - {name: v, perod: 5}", "devices[0].values[0].perod", 4),
    ("- name: D\n  device: d\n  values:\n    - name: v\n      conditionals: [[30, {teststr: x>1}]]",
     "devices[0].values[0].conditionals[0].severity", None),
    ("- name: D\n  device: d\n  values:\n    - name: v\n      conditionals:\n"
     "        - [10, {teststr: \"__import__('os').system('x')\"}]",
     "devices[0].values[0].conditionals[0].teststr", 6),
    ("- name: D\n  device: d\n  values: [{name: v}, {name: v}]", "devices[0].values[1].tag", None),
    ("port: 70000\ndevices: [{name: D, device: d, values: [{name: v}]}]", "port", 1),
    ("42", "", 1),
])
def test_config_errors_name_the_field(text, field, line):
    with pytest.raises(DashboardConfigError) as ei:
        parse_dashboard_config(parse_yaml(text, "bad.yaml"), "bad.yaml")
    assert ei.value.field == field
    if line is not None:
        assert ei.value.line == line
    assert str(ei.value).startswith("bad.yaml")


@pytest.mark.parametrize("expr, x, want", [
    ("x>10", 11, True), ("x>10", 10, False), ("x < 1e-8 or x > 5e-6", 1e-5, True),
    ("1 < x <= 3", 3, True), ("not x == 2", 2, False), ("abs(x - 5) > 1", 3.5, True),
    ("x ** 2 > 4", -3, True), ("x / 0 > 1", 1, False), ("max(x, 2) == 2", 1, True),
    ("9 ** 9 ** 9 > x", 1, False),
])
def test_safe_expressions(expr, x, want):
    assert compile_test(expr)(x) is want


@pytest.mark.parametrize("expr", ["__import__('os')", "x.real", "open('f')", "[x]", "y > 1",
                                  "lambda: 1", "x if x else 1", "'a' < x", "", "x >"])
def test_unsafe_expressions_refused(expr):
    with pytest.raises(ExpressionError):
        compile_test(expr)


def _monitor(yaml_text: str = GAUGE_YAML) -> ValueMonitor:
    cfg = parse_dashboard_config(parse_yaml(yaml_text, "g.yaml"), "g.yaml")
    dev = cfg.devices[0]
    return ValueMonitor(dev, dev.values[0], now=0.0)


def test_conditionals_fire_exactly_after_nfail_consecutive_samples():
    mon = _monitor()
    kinds = []
    for i, v in enumerate([1, 11, 5, 11, 11, 11, 11, 25, 25, 25, 25, 3, 21, 21, 21]):
        evs = mon.sample(v, float(i))
        kinds.append([e.kind for e in evs if not isinstance(e, ValueUpdate)])
    assert kinds == [[], [], [], [], ["warning"], [], [], [], [], ["critical"], [], [],
                     [], ["warning"], ["critical"]]


def test_condition_message_and_script():
    mon = _monitor()
    evs = [e for v in (25, 25, 25) for e in mon.sample(v, 1.0)]
    crit = next(e for e in evs if isinstance(e, CriticalEvent))
    assert crit.message == "Bone Gauge.pressure.x>20 is True. value=25"
    assert crit.script == "close_all.py"
    assert crit.legacy_lines() == [
        b"Bone Gauge.pressure.x>20 is True. value=25",
        b'dashboard {"device": "Bone Gauge", "kind": "critical", "message": '
        b'"Bone Gauge.pressure.x>20 is True. value=25", "script": "close_all.py", "ts": 1.0}',
        b"error Bone Gauge.pressure.x>20 is True. value=25"]
    warn = next(e for e in evs if isinstance(e, WarningEvent))
    assert warn.legacy_lines()[1] == b"Bone Gauge.pressure.x>10 is True. value=25"


def test_value_update_threshold_and_legacy_order():
    mon = _monitor(GAUGE_YAML.replace("threshold: 0", "threshold: 0.5"))
    ups = [e for v in (1.0, 1.2, 1.6, 1.6, 2.2) for e in mon.sample(v, 0.0)
           if isinstance(e, ValueUpdate)]
    assert [u.value for u in ups] == [1.0, 1.6, 2.2]
    assert ups[0].legacy_lines() == [
        b'dashboard {"device": "Bone Gauge", "kind": "value_update", "name": "pressure", '
        b'"tag": "<Bone Gauge,pressure>", "ts": 0.0, "units": "torr", "value": 1.0}',
        b"<Bone Gauge,pressure> 1.0"]


def test_tags_with_spaces_only_in_brackets():
    # the default tag contains the display name, spaces included (Pychron does the same)
    ok = parse_dashboard_config(parse_yaml(GAUGE_YAML.replace(
        "name: pressure", "name: pressure\n        tag: <a b>"), "g"), "g")
    assert ok.devices[0].values[0].tag == "<a b>"
    with pytest.raises(DashboardConfigError, match="whitespace"):
        parse_dashboard_config(parse_yaml(GAUGE_YAML.replace(
            "name: pressure", "name: pressure\n        tag: a b"), "g"), "g")


def test_timeout_and_failure_once_per_outage():
    mon = _monitor(GAUGE_YAML.replace("units: torr", "units: torr\n        timeout: 5"))
    assert mon.check_timeout(4.0) is None
    t = mon.check_timeout(6.0)
    assert isinstance(t, TimeoutEvent) and t.tag == "<Bone Gauge,pressure>"
    assert mon.check_timeout(7.0) is None
    assert [type(e) for e in mon.failure("boom", 7.0)] == [ErrorEvent]
    assert mon.failure("boom", 8.0) == []
    mon.sample(1.0, 9.0)
    assert mon.failure("again", 9.5)[0].message == "Bone Gauge.pressure: again"
    assert mon.check_timeout(13.9) is None and mon.check_timeout(14.1) is not None


def test_events_roundtrip_and_topics():
    for ev in (Heartbeat(1.0, "/x/dashboard.yaml", "polling"),
               ValueUpdate(1.0, "Env", "t", "<Env,t>", 1.5, "C"),
               TimeoutEvent(1.0, "Env", "t", "<Env,t>"), WarningEvent(1.0, "Env", "m"),
               CriticalEvent(1.0, "Env", "m", "s"), ErrorEvent(1.0, "m")):
        assert event_from_json(json.loads(json.dumps(ev.to_json()))) == ev
    assert event_from_json({"kind": "nope"}) is None
    assert event_from_json({"kind": "warning", "ts": 1}) is None
    assert event_topic("lab", ValueUpdate(1.0, "Bone Gauge", "p", "<x>", 1, "")) == (
        "lab.dashboard.value.Bone_Gauge.p")
    assert event_topic("lab", Heartbeat(1.0, "", "polling")) == "lab.dashboard.event.heartbeat"


# -- server and client over sockets ------------------------------------------------------------
class ScriptedGauge(Thing):
    """Reads 0.0 until ``go`` is set (the test is subscribed by then), then the scripted
    readings in order, then keeps returning the last one."""

    def __init__(self, name: str, readings: list[float]) -> None:
        super().__init__(name)
        self.readings = list(readings)
        self.go = False

    async def read(self) -> float:
        if not self.go:
            return 0.0
        self.reads += 1
        return self.readings[min(self.reads, len(self.readings)) - 1]


async def test_gauge_crossing_produces_exactly_the_expected_events():
    """warn x>10 (nfail 2) and critical x>20 (nfail 3) on a simulated gauge."""
    readings = [1, 11, 5, 11, 11, 11, 25, 25, 25, 25, 3]
    gauge = ScriptedGauge("gauge", readings)
    cfg = parse_dashboard_config(parse_yaml(GAUGE_YAML, "g.yaml"), "g.yaml")
    server = DashboardServer(cfg, node="lab", devices={"gauge": gauge}, port=0,
                             heartbeat=0.05)
    events: list[tuple[str, object]] = []
    await server.start()
    sub = Subscriber(server.pub_url, ["lab.dashboard.", "dashboard", "error", "Bone", "<"],
                     on_message=lambda t, p, m: events.append((t, p)))
    await sub.start()
    try:
        # subscribed once a heartbeat arrives; only then does the gauge start its script
        await sub.wait_for(lambda t, p, m: t == "lab.dashboard.event.heartbeat", timeout=10)
        events.clear()
        gauge.go = True
        # the legacy value line is the last thing published for the final reading
        await sub.wait_for(lambda t, p, m: t == "<Bone Gauge,pressure>" and p == "3",
                           timeout=10)
    finally:
        await sub.stop()
        await server.stop()
    # (the gauge's idle 0.0 reading may be published after the first heartbeat: ignore it)
    env = [p for t, p in events if t.startswith("lab.dashboard.") and p["kind"] != "heartbeat"
           and p.get("value") != 0.0]
    assert [(e["kind"], e.get("value")) for e in env] == [
        ("value_update", 1), ("value_update", 11), ("value_update", 5), ("value_update", 11),
        ("warning", None), ("value_update", 25), ("critical", None), ("value_update", 3)]
    warn = next(e for e in env if e["kind"] == "warning")
    assert warn["message"] == "Bone Gauge.pressure.x>10 is True. value=11"
    crit = next(e for e in env if e["kind"] == "critical")
    assert crit["message"] == "Bone Gauge.pressure.x>20 is True. value=25"
    legacy_dash = [p["kind"] for t, p in events if t == "dashboard" and p["kind"] != "heartbeat"
                   and p.get("value") != 0.0]
    assert legacy_dash == [e["kind"] for e in env]
    errors = [p for t, p in events if t == "error"]
    assert errors == ["Bone Gauge.pressure.x>20 is True. value=25"]


async def test_rep_answers_config_json_ping_and_errors():
    gauge = ScriptedGauge("gauge", [1.0])
    cfg = parse_dashboard_config(parse_yaml(GAUGE_YAML, "g.yaml"), "g.yaml")
    server = DashboardServer(cfg, node="lab", devices={"gauge": gauge}, port=0)
    await server.start()
    client = DashboardClient("127.0.0.1", server.port, server.rep_port)
    try:
        assert await client.ping()
        assert await client.request("config") == b"error unknown request config"
        assert await client.request("ping") == b"echo"
        snap = await client.fetch_config()
    finally:
        await client.close()
        await server.stop()
    assert snap["kind"] == "config_snapshot" and snap["config"]["port"] == server.port
    assert snap["config"]["devices"][0]["values"][0]["tag"] == "<Bone Gauge,pressure>"
    assert snap["topic_prefix"] == "lab.dashboard."


@pytest.mark.parametrize("use_envelope", [True, False])
async def test_client_receives_values_and_goes_stale(use_envelope):
    now = [1000.0]
    gauge = ScriptedGauge("gauge", [1.0, 2.0, 3.0])
    cfg = parse_dashboard_config(parse_yaml(GAUGE_YAML, "g.yaml"), "g.yaml")
    server = DashboardServer(cfg, node="lab", devices={"gauge": gauge}, port=0,
                             heartbeat=0.05)
    stale_changes: list[bool] = []
    client = DashboardClient("127.0.0.1", 0, clock=lambda: now[0], use_envelope=use_envelope,
                             on_stale=stale_changes.append)
    await server.start()
    client.port, client.rep_port = server.port, server.rep_port
    try:
        await client.connect()
        assert client.subscriber is not None
        await client.subscriber.wait_for(
            lambda t, p, m: isinstance(p, dict) and p.get("kind") == "heartbeat", timeout=10)
        gauge.go = True
        await client.subscriber.wait_for(
            lambda t, p, m: isinstance(p, dict) and p.get("value") == 3.0, timeout=10)
        assert client.values["<Bone Gauge,pressure>"] == 3.0
        assert not client.check_stale()
        await server.stop()                  # the source goes silent
        now[0] += 10.5                       # ... for more than 10 s
        assert client.check_stale() and client.stale
        assert stale_changes == [True]
    finally:
        await client.close()
        await server.stop()


async def test_client_reports_unreachable_server():
    client = DashboardClient("127.0.0.1", 1, rep_port=1, request_timeout=0.2)
    with pytest.raises(DashboardError, match="no dashboard server"):
        await client.connect()
    await client.close()


async def test_failing_and_hanging_sources_publish_error_and_timeout():
    class Bad(Thing):
        armed = False  # healthy until the test is subscribed

        async def hang(self):
            if self.armed:
                await asyncio.Event().wait()
            return 1.0

        def boom(self):
            if self.armed:
                raise RuntimeError("sensor unplugged")
            return 1.0

    dev = Bad("bad")
    cfg = parse_dashboard_config({"devices": [{"name": "Bad", "device": "bad", "values": [
        {"name": "h", "func": "hang", "period": 0.05, "timeout": 0.1, "enabled": True},
        {"name": "b", "func": "boom", "period": 0.05, "enabled": True},
    ]}]}, "x")
    server = DashboardServer(cfg, node="lab", devices={"bad": dev}, port=0, heartbeat=0.05)
    await server.start()
    sub = Subscriber(server.pub_url, ["lab.dashboard.event."])
    await sub.start()
    try:
        await sub.wait_for(lambda t, p, m: p["kind"] == "heartbeat", timeout=10)
        w_err = asyncio.ensure_future(sub.wait_for(
            lambda t, p, m: p["kind"] == "error" and "unplugged" in p["message"], timeout=10))
        w_to = asyncio.ensure_future(sub.wait_for(lambda t, p, m: p["kind"] == "timeout",
                                                  timeout=10))
        await asyncio.sleep(0)
        dev.armed = True
        (_, err, _), (_, to, _) = await asyncio.gather(w_err, w_to)
    finally:
        await sub.stop()
        await server.stop()
    assert err["message"] == "Bad.b: sensor unplugged"
    assert to["tag"] == "<Bad,h>"
    assert sum(1 for e in server.published if isinstance(e, ErrorEvent)
               and "unplugged" in e.message) == 1


async def test_on_change_value_and_remote_source():
    dev = Thing("env")
    calls = []

    async def remote(device: str, func: str) -> float:
        calls.append((device, func))
        return float(len(calls))  # changes on every poll, so it is published every time

    cfg = parse_dashboard_config({"devices": [
        {"name": "Env", "device": "env", "values": [
            {"name": "temp", "period": "on_change", "enabled": True, "bind": "t"}]},
        {"name": "Far", "device": "other-node-gauge", "values": [
            {"name": "p", "func": "pressure IG", "period": 0.05, "enabled": True}]},
    ]}, "x")
    server = DashboardServer(cfg, node="lab", devices={"env": dev}, remote=remote, port=0)
    await server.start()
    sub = Subscriber(server.pub_url, ["lab.dashboard.value."])
    await sub.start()
    try:
        await sub.wait_for(lambda t, p, m: t.endswith("Far.p"), timeout=10)
        w = asyncio.ensure_future(sub.wait_for(lambda t, p, m: t.endswith("Env.temp"),
                                               timeout=10))
        while not w.done():
            dev.set("t", 21.5)
            dev.set("other", 99)
            await asyncio.wait([w], timeout=0.02)
        _, p, _ = w.result()
    finally:
        await sub.stop()
        await server.stop()
    assert p["value"] == 21.5 and p["tag"] == "<Env,temp>"
    assert calls[0] == ("other-node-gauge", "pressure IG")
    assert not dev._listeners


def test_missing_device_or_method_is_a_clear_error():
    cfg = parse_dashboard_config({"devices": [{"name": "E", "device": "nope", "values": [
        {"name": "v", "enabled": True}]}]}, "d.yaml")
    with pytest.raises(DashboardError, match="no device named 'nope'"):
        DashboardServer(cfg, devices={})
    cfg2 = parse_dashboard_config({"devices": [{"name": "E", "device": "t", "values": [
        {"name": "v", "func": "missing", "enabled": True}]}]}, "d.yaml")
    with pytest.raises(DashboardError, match="no method 'missing'"):
        DashboardServer(cfg2, devices={"t": Thing("t")})


# -- dashboard.xml -----------------------------------------------------------------------------
DASH_XML = """<root>
  <port>8100</port>
  <device>Env<name>env_ctrl</name><use>true</use>
    <value>temperature<func>get_temp</func><period>30</period><enabled>true</enabled>
      <units>C</units><record/><change_threshold>0.1</change_threshold>
      <conditionals>
        <warn>x>30<nfail>3</nfail></warn>
        <critical>x>40<nfail>2</nfail><script>cool.py</script></critical>
      </conditionals>
    </value>
    <value>humidity<period>on_change</period><bind>rh</bind></value>
  </device>
</root>"""


def test_dashboard_xml_reads_into_the_same_model():
    from labbridge.protocol.telemetry.dashboard_config import parse_dashboard_xml

    cfg = parse_dashboard_xml(DASH_XML, "dashboard.xml")
    (env,) = cfg.devices
    t, h = env.values
    assert (env.name, env.device, env.enabled) == ("Env", "env_ctrl", True)
    assert (t.func_name, t.period, t.enabled, t.units, t.record, t.threshold) == (
        "get_temp", 30.0, True, "C", True, 0.1)
    assert [(c.severity, c.teststr, c.nfail, c.script) for c in t.conditionals] == [
        (Severity.WARNING, "x>30", 3, ""), (Severity.CRITICAL, "x>40", 2, "cool.py")]
    assert h.on_change and h.bindname == "rh" and h.enabled is False


@pytest.mark.parametrize("text, msg", [
    ("<root><device>", "XML syntax error"),
    ('<!DOCTYPE r [<!ENTITY a "aaaa">]><root/>', "DOCTYPE"),
    ("<root><device>D<name>d</name><value>v<period>-1</period></value></device></root>",
     "period"),
])
def test_dashboard_xml_errors(text, msg):
    from labbridge.protocol.telemetry.dashboard_config import parse_dashboard_xml

    with pytest.raises(DashboardConfigError, match=msg):
        parse_dashboard_xml(text, "d.xml")
