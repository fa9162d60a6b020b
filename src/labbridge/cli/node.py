"""``labbridge check PATH`` and ``labbridge ports CONFIG``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from labbridge.cli.common import fail_on_config_error, node_file
from labbridge.node.config import ConfigError, load_yaml
from labbridge.node.node import build_node
from labbridge.node.seed import (
    detect_kind,
    load_device_file,
    load_initialization,
    load_server_file,
    migration_warnings,
    plugin_notes,
)
from labbridge.transport.endpoint import Endpoint


def check_one(path: Path) -> tuple[str, list[str]]:
    """Validate one file; returns a one-line summary and notes (what labbridge does for each
    plugin of an initialization.xml), or raises ConfigError."""
    kind = detect_kind(path)
    if kind == "initialization":
        init = load_initialization(path)
        for warning in migration_warnings(init):
            click.echo(f"warning: {warning}", err=True)
        return (f"initialization.xml, node role {init.role()}: "
                f"{', '.join(init.enabled()) or 'no enabled plugins'}"), plugin_notes(init)
    if kind == "device":
        link = load_device_file(path)
        return (f"device file ({link.shape} shape): {link.name} = {link.klass} -> "
                f"{link.role} at {link.host}:{link.port} over {link.kind}, "
                f"timeout {link.timeout:g} s"), []
    if kind == "server":
        srv = load_server_file(path)
        return f"command-server file: listen on {srv.host}:{srv.port}", []
    if kind == "dashboard":
        from labbridge.protocol.telemetry.dashboard_config import (
            DashboardConfigError,
            parse_dashboard_config,
        )

        try:
            cfg = parse_dashboard_config(load_yaml(path), str(path))
        except DashboardConfigError as exc:
            raise ConfigError(str(exc)) from None
        return f"dashboard file: {len(cfg.devices)} device(s), PUB port {cfg.port}", []
    node = build_node(path)
    for warning in node.warnings:
        click.echo(f"warning: {warning}", err=True)
    eps = node.endpoints()
    return (f"node {node.name!r}: {len(node.devices)} device(s), {len(node.services)} "
            f"service(s), {len(eps)} endpoint(s)"), node.notes


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def check(paths: tuple[str, ...]) -> None:
    """Validate configuration files: node files, initialization.xml, device and server YAML,
    dashboard.yaml. Errors name the file, the line and the field (one line per bad file)."""
    failed = 0
    for p in paths:
        if not Path(p).is_file():
            failed += 1
            what = "is a directory" if Path(p).is_dir() else "no such file"
            click.echo(f"error: {p}: {what}; check the path", err=True)
            continue
        try:
            summary, notes = check_one(Path(p))
        except ConfigError as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"ok: {p}: {summary}")
            for note in notes:  # what labbridge runs for each plugin (docs/seeds.md)
                click.echo(f"  plugin {note}")
    if failed:
        sys.exit(1)


@click.command()
@click.argument("config", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ports(config: str, as_json: bool) -> None:
    """What the node in CONFIG listens on and connects to (for firewall rules)."""
    node_file(config)
    with fail_on_config_error():
        node = build_node(config)
    eps = node.endpoints()
    if as_json:
        import json

        click.echo(json.dumps([e.to_json() for e in eps], indent=2))
        return
    click.echo(f"node {node.name}")
    headings = {"listen": "listens on:", "connect": "connects to:", "file": "writes:"}
    for role in (*headings, *sorted({e.role for e in eps} - set(headings))):
        rows = [e for e in eps if e.role == role]
        if not rows:
            continue
        click.echo(f"  {headings.get(role, role + ':')}")
        for e in rows:
            proto = e.protocol.upper() if e.protocol in ("tcp", "udp") else e.protocol
            click.echo(f"    {proto:<8} {_where(e):<24} {e.service}"
                       + (f"  ({e.purpose})" if e.purpose else ""))


def _where(e: Endpoint) -> str:
    """host:port of a network endpoint (a ``tcp://`` URL counts), else its path."""
    if e.port is not None or e.host is not None:
        return f"{e.host or '*'}:{e.port if e.port is not None else '?'}"
    if e.path and e.path.startswith("tcp://"):
        return e.path.removeprefix("tcp://")
    return e.path or "?"


def register(group: click.Group) -> None:
    group.add_command(check)
    group.add_command(ports)
