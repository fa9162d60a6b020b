"""What docs/web.md's commands do, beyond running as written (tests/docs runs every line of
it): the Try-it lab shows the commands' effects on the page, whose controls need a login; the
identities `keys passwd` (typed here: the docs test cannot type) and `keys token` print log in;
the certificate `keys tls-cert` makes is one the page serves. Listening ports are the one
substitution: a test binds port 0, never the documented 8080, 1061, 5555 or 8100; key files go
to a temporary working directory."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from click.testing import CliRunner

from labbridge.cli import cli as cli_main
from labbridge.node.node import build_node
from tests.cli_helpers import labbridge_cmd, port_of, run_cli
from tests.conftest import REPO

DOC = REPO / "docs" / "web.md"


def documented_commands() -> set[str]:
    text = DOC.read_text()
    blocks = re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, re.M | re.S)
    lines = [ln for b in blocks for ln in b.splitlines()]
    block = [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines
             if ln.startswith(("labbridge ", "python "))]
    inline = re.findall(r"`((?:labbridge|python) [^`]*|labbridge)`", text)
    return {c.strip() for c in block + inline}


TRY_IT = (
    "labbridge dashboard examples/dashboard-web.yaml",
    "labbridge call 127.0.0.1:1061 Open A",
    "labbridge call 127.0.0.1:1061 SetSetpoint 400",
    "labbridge call 127.0.0.1:1061 Lock E",
)
LOGINS = ("labbridge keys passwd olivia --role operator",
          "labbridge keys token robot --role operator")
TLS = ("labbridge keys tls-ca --dir keys",
       "labbridge keys tls-cert web --dir keys --host 192.168.1.30 --host lab-pc.example.org")
#: Run elsewhere: the demo (tests/node/test_demo_and_lab.py, and its login in
#: tests/web/test_demo_login.py), `dashboard`/`serve` on any node file (tests/web/test_cli.py),
#: and this very suite.
ELSEWHERE = {"labbridge demo", "labbridge dashboard", "labbridge serve",
             "python -m pytest -q tests/web"}
EXPECTED = {*TRY_IT, *LOGINS, *TLS, *ELSEWHERE}


def test_the_doc_shows_exactly_the_commands_tested_here():
    assert documented_commands() == EXPECTED


def _http_port(info: dict) -> int:
    return port_of(info, "http")


def test_try_it_the_example_lab_on_free_ports(tmp_path):
    """The "Try it" block: the example's dashboard, and three commands to its command server
    that the page shows; the page itself, without a login, may not control."""
    example = (REPO / "examples" / "dashboard-web.yaml").read_text()
    copy = tmp_path / "dashboard-web.yaml"
    copy.write_text(re.sub(r"\bport: \d+", "port: 0", example))
    (tmp_path / "lab").symlink_to(REPO / "examples" / "lab")
    ready = tmp_path / "ready.json"
    log = open(tmp_path / "dashboard.log", "w+", encoding="utf-8")
    proc = subprocess.Popen(labbridge_cmd(*TRY_IT[0].split()[1:2], str(copy),
                                          "--ready-file", str(ready)),
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # the ready file is a process's only readiness signal
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        cmd, web = port_of(info, "tcp", "command-server"), _http_port(info)
        for line in TRY_IT[1:]:
            args = line.replace("127.0.0.1:1061", f"127.0.0.1:{cmd}").split()[1:]
            res = run_cli(*args)
            assert res.returncode == 0, res.stderr
        base = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 20
        while True:  # the bus brings the changes to the dashboard: poll its API
            d = _get_json(f"{base}/api/devices")
            valves = {v["name"]: v for v in d["valves"]}
            series = {s["topic"]: s for s in d["series"]}
            sp = series.get("lab-in-a-box.furnace.setpoint", {}).get("last")
            if valves.get("A", {}).get("state") == "open" and valves.get("E", {}).get(
                    "locked") and sp and sp[1] == 400:
                break
            assert time.monotonic() < deadline, (valves, sp)
            time.sleep(0.2)
        req = _post(f"{base}/api/control/valve",
                    {"node": "lab-in-a-box", "valve": "E", "action": "open"})
        assert req[0] == 403 and "log in" in req[1]["reason"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    out = (tmp_path / "dashboard.log").read_text()
    assert f"dashboard web: http://127.0.0.1:{web}/" in out


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _identity_line(output: str, name: str) -> str:
    m = re.search(rf"^\s+{name}: (\{{.*\}})$", output, re.M)
    assert m, output
    return m.group(1)


async def test_keys_passwd_and_token_make_identities_that_log_in(tmp_path):
    runner = CliRunner()
    password = "olivia's long password"
    res = runner.invoke(cli_main, LOGINS[0].split()[1:], input=f"{password}\n{password}\n")
    assert res.exit_code == 0, res.output
    olivia = _identity_line(res.output, "olivia")
    assert password not in res.output  # asked for, never shown
    res = runner.invoke(cli_main, LOGINS[1].split()[1:])
    assert res.exit_code == 0, res.output
    robot = _identity_line(res.output, "robot")
    token = re.search(r"token \(shown once, give it to robot\): (\S+)", res.output).group(1)
    node_file = tmp_path / "web.yaml"
    node_file.write_text(f"""node: dashboard
security:
  addresses:
    admin: [127.0.0.1]
  identities:
    olivia: {olivia}
    robot: {robot}
services:
  - kind: web_dashboard
    port: 0
""")
    node = build_node(node_file, state_dir=tmp_path / "state")
    await node.start()
    try:
        url = node.services[0].dashboard.url
        async with aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as h:
            r = await h.post("/api/login", json={"user": "olivia", "password": password})
            assert (await r.json())["role"] == "operator"
        async with aiohttp.ClientSession(url) as h:
            me = await (await h.get("/api/session",
                                    headers={"Authorization": f"Bearer {token}"})).json()
            assert me["identity"] == "robot" and me["role"] == "operator"
    finally:
        await node.stop()


async def test_tls_commands_make_a_certificate_the_page_serves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for line in TLS:
        res = runner.invoke(cli_main, line.split()[1:])
        assert res.exit_code == 0, res.output
    node_file = tmp_path / "web.yaml"
    node_file.write_text("node: dashboard\nservices:\n  - kind: web_dashboard\n    port: 0\n"
                         "    tls: {cert: keys/web.crt, key: keys/web.pem}\n")
    node = build_node(node_file, state_dir=tmp_path / "state")
    await node.start()
    try:
        url = node.services[0].dashboard.url
        assert url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(Path("keys/ca.crt")))
        trust.check_hostname = False  # the certificate names 192.168.1.30, not 127.0.0.1
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as h:
            me = await (await h.get(f"{url}api/session")).json()
            assert me["tls"] is True and me["role"] == "observer"
    finally:
        await node.stop()
