"""Curve keys for ``labbridge demo`` (docs/security.md, "The bus"; ADR 0127).

The demo's bus is secured like a real lab's: every demo node that binds bus sockets (a
notifier, a dashboard server) gets its own key pair and a ``security`` section that admits the
demo's clients by their keys; every client entry that points at such a socket (a recorder's
``connect``, the web dashboard's ``subscribe``, the acquisition's ``bus``) gets the server's
public key and the client's own pair. Keys live in ``<workdir>/keys`` (mode 700; secret files
mode 600) and are made on first use. One more pair, ``console``, is for the person trying the
demo: ``labbridge watch URL --server-key ... --client-key ...`` (:func:`watch_args`).

:func:`secure_demo_bus` is the one call the demo makes per generated node file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labbridge.bus.auth import CurveKeyPair, read_secret_key, write_key_pair

#: Who may subscribe to the demo's bus: the demo's client nodes and the console user.
DEMO_CLIENTS = ("data-reduction", "dashboard", "acquisition", "console")
#: Service kinds that bind bus sockets.
BUS_SERVERS = ("notifier", "dashboard_server")
#: Protocols of bus sockets in a ready file.
BUS_PROTOCOLS = ("zmq-pub", "zmq-rep")


def key_dir(workdir: Path) -> Path:
    return workdir / "keys"


def key_pair(workdir: Path, name: str) -> CurveKeyPair:
    """The demo key pair ``name`` (made on first use)."""
    d = key_dir(workdir)
    path = d / f"{name}.key_secret"
    if path.exists():
        return read_secret_key(path)
    return write_key_pair(d, name)


def bus_servers(components: Mapping[str, Any]) -> dict[str, str]:
    """``tcp://host:port`` of every bus socket of the started demo nodes -> node name (from
    their ready files: ``component.info["services"]``)."""
    out: dict[str, str] = {}
    for key, comp in components.items():
        info = getattr(comp, "info", None) or {}
        for s in info.get("services", []):
            if s.get("protocol") in BUS_PROTOCOLS and s.get("port") \
                    and s.get("role", "listen") == "listen":
                host = str(s.get("host") or "127.0.0.1")
                host = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
                out[f"tcp://{host}:{int(s['port'])}"] = key
    return out


def secure_demo_bus(cfg: dict[str, Any], workdir: Path,
                    components: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` (a generated demo node file) with Curve on its bus sockets and on its client
    entries that point at the bus sockets of ``components`` (already started)."""
    cfg = copy.deepcopy(cfg)
    node = str(cfg.get("node", ""))
    keydir = key_dir(workdir)
    services = cfg.get("services", [])
    if any(s.get("kind") in BUS_SERVERS for s in services):
        key_pair(workdir, node)
        had = "security" in cfg
        sec = cfg.setdefault("security", {})
        if not had:  # keep the default policy: this machine (loopback) is admin
            sec["addresses"] = {"admin": ["127.0.0.0/8", "::1"]}
        sec["curve"] = {"secret_key": str(keydir / f"{node}.key_secret")}
        idents = sec.setdefault("identities", {})
        for client in DEMO_CLIENTS:
            idents.setdefault(client, {"role": "observer",
                                       "curve_key": key_pair(workdir, client).public.decode()})
    servers = bus_servers(components)

    def entry(url: str) -> Any:
        server = servers.get(url)
        if server is None:
            return url
        key_pair(workdir, node)
        return {"url": url, "server_key": str(keydir / f"{server}.key"),
                "client_key": str(keydir / f"{node}.key_secret")}

    for svc in services:
        kind = svc.get("kind")
        if kind == "recorder":
            svc["connect"] = [entry(u) if isinstance(u, str) else u
                              for u in svc.get("connect", [])]
        elif kind == "web_dashboard":
            svc["subscribe"] = [entry(u) if isinstance(u, str) else u
                                for u in svc.get("subscribe", [])]
        elif kind == "remote_manager" and isinstance(svc.get("bus"), str):
            svc["bus"] = entry(svc["bus"])
    return cfg


def watch_args(workdir: Path, server: str) -> str:
    """The key options of ``labbridge watch`` for the console user on node ``server``."""
    key_pair(workdir, "console")
    d = key_dir(workdir)
    return f"--server-key {d / f'{server}.key'} --client-key {d / 'console.key_secret'}"
