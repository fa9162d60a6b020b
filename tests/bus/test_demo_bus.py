"""The demo's bus with Curve (labbridge.node.demo_keys): keys in the demo's directory (secret
files mode 600), node files whose bus sockets are Curve servers admitting the demo's clients,
and clients that reach them; a client without keys receives nothing."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

import yaml

from labbridge.access import REFUSED
from labbridge.bus.auth import read_public_key
from labbridge.bus.subscriber import Subscriber
from labbridge.node.demo_keys import DEMO_CLIENTS, key_dir, secure_demo_bus, watch_args
from labbridge.node.node import build_node


def _server_cfg() -> dict:
    return {"node": "valve-controller",
            "services": [{"kind": "notifier", "name": "notifier", "host": "127.0.0.1",
                          "port": 0, "rep_port": 0, "heartbeat": 0.05}]}


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def test_demo_bus_is_curve_end_to_end(tmp_path):
    server_cfg = secure_demo_bus(_server_cfg(), tmp_path, {})
    keys = key_dir(tmp_path)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("valve-controller", *DEMO_CLIENTS):
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
    sec = server_cfg["security"]
    assert sec["addresses"] == {"admin": ["127.0.0.0/8", "::1"]}  # the default, kept
    assert sec["curve"] == {"secret_key": str(keys / "valve-controller.key_secret")}
    assert sec["identities"]["data-reduction"] == {
        "role": "observer",
        "curve_key": read_public_key(str(keys / "data-reduction.key")).decode()}
    server = build_node(_write(tmp_path / "valves.yaml", server_cfg),
                        state_dir=tmp_path / "s1")
    await server.start()
    try:
        pub = server.ctx.services["notifier"].notifier.pub_url
        started = {"valve-controller": SimpleNamespace(info={"services": [
            e.to_json() for e in server.endpoints()]})}
        rec_cfg = secure_demo_bus(
            {"node": "data-reduction",
             "services": [{"kind": "recorder", "name": "recorder", "connect": [pub],
                           "path": "lab.sqlite", "flush_interval": 0.05}]},
            tmp_path, started)
        assert rec_cfg["services"][0]["connect"] == [{
            "url": pub, "server_key": str(keys / "valve-controller.key"),
            "client_key": str(keys / "data-reduction.key_secret")}]
        assert "security" not in rec_cfg  # it binds nothing
        assert watch_args(tmp_path, "valve-controller") == (
            f"--server-key {keys / 'valve-controller.key'} "
            f"--client-key {keys / 'console.key_secret'}")
        client = build_node(_write(tmp_path / "rec.yaml", rec_cfg), state_dir=tmp_path / "s2")
        await client.start()
        stranger = Subscriber(pub, name="no-keys")
        await stranger.start()
        try:
            rec = client.ctx.services["recorder"].recorder
            await rec.subscriber.wait_for(
                lambda t, p, m: t == "valve-controller.notifier.heartbeat", timeout=15)
            t0 = server.ctx.services["notifier"].notifier.clock()
            await rec.subscriber.wait_for(
                lambda t, p, m: t == "valve-controller.notifier.heartbeat" and m.ts > t0 + 0.2,
                timeout=15)
            assert stranger.received == 0
            assert any(e.outcome == REFUSED and "without a Curve key" in e.reason
                       for e in server.ctx.gate.recent)
        finally:
            await stranger.stop()
            await client.stop()
    finally:
        await server.stop()


def test_demo_keys_keep_a_security_section_the_demo_already_wrote(tmp_path):
    cfg = _server_cfg()
    cfg["security"] = {"addresses": {"admin": ["127.0.0.1"]},
                       "identities": {"web": {"role": "operator", "password": "x"}}}
    out = secure_demo_bus(cfg, tmp_path, {})
    assert out["security"]["addresses"] == {"admin": ["127.0.0.1"]}
    assert out["security"]["identities"]["web"] == {"role": "operator", "password": "x"}
    assert set(DEMO_CLIENTS) <= set(out["security"]["identities"])
    assert "security" in cfg and "curve" not in cfg["security"]  # the input is left alone
