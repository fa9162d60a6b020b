"""Where a node's bus clients connect, and with which Curve keys (docs/bus.md, "Curve").

A client entry in a node file (a recorder's ``connect``, a web dashboard's ``subscribe``, a
remote manager's ``bus``) is one of:

* the name of a publishing service of this node (declared before): when the node has a
  Curve key pair (``security.curve``), the client uses it both as the server's key and as
  its own, and the node's bus admits itself;
* a URL (``tcp://host:5555`` or ``host:5555``): plain ZeroMQ;
* a mapping ``{url: tcp://host:5555, server_key: keys/valve-controller.key,
  client_key: keys/recorder.key_secret}``: Curve, with the server's public key (a key file,
  or the 40-character key itself) and this client's key pair (a private file, mode 600).
  Key files are relative to the node file.

:func:`subscriptions` is what a service kind with a list of bus subscriptions calls: it
checks the entries (file:line errors) and returns their labels and a resolver that turns a
label into the URL to connect to, carrying its keys (a
:class:`~labbridge.bus.auth.SecureEndpoint`, which the Subscriber understands).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labbridge.bus.auth import (
    ClientKeys,
    KeyFileError,
    SecureEndpoint,
    read_public_key,
    read_secret_key,
)
from labbridge.bus.sockets import BusError, normalize_endpoint
from labbridge.node.config import ConfigError, Section
from labbridge.node.registry import NodeContext
from labbridge.node.security import node_curve


def own_keys(ctx: NodeContext) -> ClientKeys | None:
    """Keys for reaching this node's own bus sockets: its own pair, both ways."""
    pair = node_curve(ctx.gate)
    return ClientKeys(pair.public, pair) if pair is not None else None


def client_keys(sec: Section, ctx: NodeContext, server_field: str = "server_key",
                client_field: str = "client_key") -> ClientKeys | None:
    """``server_key`` and ``client_key`` of ``sec`` (both or neither), read and checked."""
    server = sec.get_str(server_field, None)
    client = sec.get_str(client_field, None)
    if server is None and client is None:
        return None
    if client is None:
        raise sec.error(server_field, f"{server_field} needs {client_field} too: this "
                        "client's key pair (NAME.key_secret, made by `labbridge keys curve "
                        "NAME`)")
    if server is None:
        raise sec.error(client_field, f"{client_field} needs {server_field} too: the public "
                        "key of the node it connects to (its NAME.key)")
    try:
        server_key = read_public_key(server, ctx.config_dir)
    except KeyFileError as exc:
        raise sec.error(server_field, str(exc)) from None
    try:
        pair = read_secret_key(ctx.resolve_path(client))
    except KeyFileError as exc:
        raise sec.error(client_field, str(exc)) from None
    return ClientKeys(server_key, pair)


@dataclass(frozen=True)
class BusTarget:
    """One client entry: a service of this node or a URL, and the keys to use."""

    label: str
    service: str | None = None
    url: str | None = None
    keys: ClientKeys | None = None

    def resolve(self, ctx: NodeContext) -> str:
        """The URL to connect to (a SecureEndpoint when there are keys); services are
        resolved when the node starts, so that ``port: 0`` works."""
        if self.service is not None:
            url = str(ctx.services[self.service].pub_url)
            keys = self.keys or own_keys(ctx)
        else:
            assert self.url is not None
            url, keys = self.url, self.keys
        return SecureEndpoint(url, keys) if keys is not None else url


def _target(where: Section, field: str, value: str, ctx: NodeContext,
            keys: ClientKeys | None, consumer: str) -> BusTarget:
    svc = ctx.services.get(value)
    if svc is not None:
        if not hasattr(type(svc), "pub_url"):
            raise where.error(field, f"service {value!r} publishes nothing")
        return BusTarget(value, service=value, keys=keys)
    try:
        url = normalize_endpoint(value)
    except BusError as exc:
        raise where.error(field, f"{exc} (nor the name of a publishing service declared "
                                 f"before the {consumer})") from None
    return BusTarget(value, url=url, keys=keys)


def bus_target(sec: Section, key: str, ctx: NodeContext, consumer: str) -> BusTarget | None:
    """The single entry ``key`` of ``sec`` (a URL, a service name or a mapping), or None."""
    value = sec.get(key)
    if value is None:
        sec.get_str(key, None)  # marks the key as read
        return None
    if isinstance(value, dict):
        return _entry(sec.get_section(key), ctx, consumer)
    return _target(sec, key, sec.get_str(key), ctx, None, consumer)


def _entry(one: Section, ctx: NodeContext, consumer: str) -> BusTarget:
    keys = client_keys(one, ctx)
    target = _target(one, "url", one.get_str("url"), ctx, keys, consumer)
    one.check_no_unknown()
    return target


def bus_targets(sec: Section, key: str, ctx: NodeContext, consumer: str,
                default: list[Any] | None = None) -> list[BusTarget]:
    """The list ``key`` of ``sec``: each entry a URL, a service name or a mapping."""
    items = sec.get_list(key, default)
    if items is None:
        return []
    raw = sec.get(key)
    lines = getattr(raw, "lines", None) or [sec.line_of(key)] * len(items)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            one = Section(item, file=sec.file, path=f"{sec.field_name(key)}[{i}]",
                          line=lines[i])
            out.append(_entry(one, ctx, consumer))
        elif isinstance(item, str) and item:
            out.append(_target(sec, key, item, ctx, None, consumer))
        else:
            raise ConfigError(f"expected a URL, a service name or {{url, server_key, "
                              f"client_key}}, got {item!r}", file=sec.file, line=lines[i],
                              field=f"{sec.field_name(key)}[{i}]")
    return out


def subscriptions(sec: Section, ctx: NodeContext, key: str = "subscribe",
                  consumer: str = "dashboard") -> tuple[list[str], Callable[[str], str]]:
    """The bus subscriptions listed under ``key``: their labels (the URL or service name
    each entry gives) and a resolver from a label to the URL to connect to, with its keys."""
    targets = bus_targets(sec, key, ctx, consumer, [])
    by_label = {t.label: t for t in targets}

    def resolve(label: str) -> str:
        target = by_label.get(label)
        if target is None:  # not from this list: a URL or a service name as it is
            svc = ctx.services.get(label)
            return str(svc.pub_url) if svc is not None else normalize_endpoint(label)
        return target.resolve(ctx)

    return [t.label for t in targets], resolve
