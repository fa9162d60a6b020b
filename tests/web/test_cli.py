"""``labbridge dashboard CONFIG`` as a user runs it: prints the URL, serves the page, exits 0
on SIGTERM; a node file without a web_dashboard gets a clear error."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request

from tests.cli_helpers import labbridge_cmd, run_cli
from tests.conftest import REPO

NODE = """
node: dash
services:
  - {kind: web_dashboard, name: web, port: 8080, title: CLI lab,
     subscribe: ["tcp://127.0.0.1:1"]}
"""


def test_dashboard_runs_alone_prints_url_and_stops_on_sigterm(tmp_path):
    cfg = tmp_path / "web.yaml"
    cfg.write_text(NODE)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(labbridge_cmd("dashboard", str(cfg), "--port", "0",
                                          "--ready-file", str(ready)),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # the ready file is the only readiness signal of a process
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        http = next(s for s in info["services"] if s["protocol"] == "http")
        assert http["host"] == "127.0.0.1" and http["port"] != 8080
        base = f"http://127.0.0.1:{http['port']}"
        with urllib.request.urlopen(f"{base}/api/config", timeout=5) as r:
            cfg_json = json.loads(r.read())
        assert cfg_json["title"] == "CLI lab" and cfg_json["control"] is False
        with urllib.request.urlopen(f"{base}/", timeout=5) as r:
            assert b"labbridge dashboard" in r.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"dashboard web: {base}/" in out
    # run as `labbridge serve` runs a node: the ready file exists only while it serves
    assert not ready.exists()


def test_dashboard_on_a_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "web.yaml"
        cfg.write_text(NODE)
        res = run_cli("dashboard", str(cfg), "--port", str(port), timeout=60)
    assert res.returncode == 1
    # Log lines (timestamped) may come first, e.g. the subscriber saying nothing listens on
    # the made-up endpoint; the error itself is one line.
    lines = [ln for ln in res.stderr.strip().splitlines()
             if not re.match(r"\d\d:\d\d:\d\d\.\d{3} ", ln)]
    assert len(lines) == 1 and "cannot start node dash" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_dashboard_without_a_web_service_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bus.yaml"
    cfg.write_text("node: n\nservices:\n  - {kind: notifier, name: bus, port: 0}\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode == 1
    assert "no service of kind web_dashboard" in res.stderr


def test_bad_web_dashboard_fields_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    port: 80000\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode != 0
    assert "bad.yaml" in res.stderr and "port" in res.stderr and ":4" in res.stderr
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    command_servers:\n"
                   "      - {node: v, url: nohost}\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode != 0 and "HOST:PORT" in res.stderr


def test_the_example_node_file_builds():
    from labbridge.node.kinds.web import WebDashboardService
    from labbridge.node.node import build_node

    node = build_node(REPO / "examples" / "dashboard-web.yaml")
    (web,) = [s for s in node.services if isinstance(s, WebDashboardService)]
    cfg = web.dashboard.config
    assert cfg.host == "127.0.0.1" and cfg.control is True and cfg.recorder is not None
    assert cfg.layout["lab-in-a-box"]["B"] == {"x": 1.0, "y": 0.0}  # the bank's own hint
    line = cfg.schematic["lab-in-a-box"]
    assert line["valves"]["B"] == [2.0, 0.0] and ["B", "D", "getter"] in line["pipes"]
    assert cfg.alarms[0].topic == "lab-in-a-box.gauges.IG" and cfg.alarms[0].above == 1e-6
    assert [t.node for t in cfg.command_servers] == ["lab-in-a-box"]
    assert cfg.subscribe == ["notifier", "dashboard"]


def test_schematic_and_alarm_mistakes_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    schematic:\n"
                   "      v: {valves: {A: [0, 0]}, pipes: [[A, B]]}\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode != 0 and "bad.yaml" in res.stderr
    assert "pipes" in res.stderr and "B" in res.stderr and "placed nowhere" in res.stderr
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    schematic:\n"
                   "      v: {valves: {A: [0]}}\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode != 0 and "position [x, y]" in res.stderr
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    alarms:\n"
                   "      - {topic: n.g.IG, level: loud, above: 1}\n")
    res = run_cli("dashboard", str(cfg))
    assert res.returncode != 0 and "level" in res.stderr and ":5" in res.stderr
