"""The ``security`` section of a node file, and the exposure warnings of ``labbridge check``.

Node file::

    security:
      addresses:                     # roles by source address, for protocols with no
        admin: [127.0.0.1]           #   credentials (Pychron, relay, Qtegra, PyMoDAQ,
        operator: [192.168.1.10]     #   hexrotcomm); the highest matching role wins;
        observer: [192.168.1.0/24]   #   a role left out, or [], is given to nobody
      udp_writers: [192.168.1.10]    # hosts whose UDP datagrams may change state
                                     #   (default: loopback only)
      local: admin                   # role of local callers (the node's private sockets)
      identities:                    # for labbridge's own clients, the bus and the web page
        alice:
          role: operator
          password: "scrypt$..."     # `labbridge keys passwd`
          token: "sha256$..."        # `labbridge keys token`
          curve_key: "<40 Z85 characters>"   # `labbridge keys curve` (or its NAME.key file)
          cert: alice                # TLS client certificate common name
      curve:                         # the node's CurveZMQ key pair: every bus socket it
        secret_key: keys/valve-controller.key_secret   # binds is a Curve server (mode 600,
                                     #   this user's file; relative to the node file)

With no ``security`` section the node trusts its own machine (loopback and local callers are
``admin``) and nobody else. See docs/security.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labbridge.access import LOOPBACK, Gate, Identity, Policy, Role, check_hash_format
from labbridge.bus.auth import CurveKeyPair, KeyFileError, read_public_key, read_secret_key
from labbridge.node.config import Section


@dataclass
class NodePolicy(Policy):
    """A node's policy and the key material its security section names."""

    #: The node's CurveZMQ key pair (``security.curve.secret_key``): every bus socket the
    #: node binds is a Curve server with it (docs/security.md, "The bus").
    curve: CurveKeyPair | None = None


def node_curve(gate: Gate) -> CurveKeyPair | None:
    """The Curve key pair of the node whose gate this is (None: its bus is plain ZeroMQ)."""
    policy = gate.policy
    return policy.curve if isinstance(policy, NodePolicy) else None

_ROLE_NAMES = ("observer", "operator", "admin")
_Z85 = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def parse_security(sec: Section | None) -> Policy:
    """The node's policy from its ``security`` section (None: the default policy)."""
    if sec is None:
        return Policy.default()
    addresses: dict[Role, tuple[Any, ...]] = {}
    addr_sec = sec.get_section("addresses", None)
    if addr_sec is not None:
        for name in _ROLE_NAMES:
            nets = addr_sec.get_networks(name, [])
            addresses[Role.parse(name)] = tuple(nets)
        for key in addr_sec.unknown_keys():
            raise addr_sec.error(key, f"unknown role {key!r} (roles: {', '.join(_ROLE_NAMES)})")
    udp_writers = tuple(sec.get_networks("udp_writers", list(LOOPBACK)))
    local = Role.parse(sec.get_choice("local", ("nobody", *_ROLE_NAMES), "admin"))
    curve = _curve(sec)  # the node's own pair first: the first key a new node needs
    identities: dict[str, Identity] = {}
    id_sec = sec.get_section("identities", None)
    if id_sec is not None:
        for name in list(id_sec):
            one = id_sec.get_section(name)
            identities[name] = _identity(name, one)
            one.check_no_unknown()
    sec.check_no_unknown()
    return NodePolicy(addresses=addresses, identities=identities, udp_writers=udp_writers,
                      local_role=local, configured=True, curve=curve)


def _base(sec: Section) -> Path:
    """Where paths in the node file start: its directory."""
    return Path(sec.file).parent if sec.file else Path.cwd()


def _curve(sec: Section) -> CurveKeyPair | None:
    """``curve: {secret_key: FILE}``: the node's key pair, from a private file (mode 600,
    owned by the user running the node) relative to the node file."""
    csec = sec.get_section("curve", None)
    if csec is None:
        return None
    value = csec.get_str("secret_key")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = _base(sec) / path
    try:
        pair = read_secret_key(path)
    except KeyFileError as exc:
        raise csec.error("secret_key", str(exc)) from None
    csec.check_no_unknown()
    return pair


def _identity(name: str, sec: Section) -> Identity:
    role = Role.parse(sec.get_choice("role", _ROLE_NAMES))
    password = sec.get_str("password", None)
    token = sec.get_str("token", None)
    for key, value in (("password", password), ("token", token)):
        if value is not None:
            why = check_hash_format(value)
            if why is not None:
                raise sec.error(key, f"{why}; never write a plain password here")
    if token is not None and not token.startswith("sha256$"):
        raise sec.error("token", "a token hash is sha256$<hex> (made by `labbridge keys token`)")
    curve = sec.get_str("curve_key", None)
    if curve is not None and (len(curve) != 40 or not set(curve) <= _Z85):
        # not a key: the client's public key file (NAME.key), relative to the node file
        try:
            curve = read_public_key(curve, _base(sec)).decode("ascii")
        except KeyFileError as exc:
            if curve.endswith(".key"):  # clearly a file name: the file's own trouble
                raise sec.error("curve_key", str(exc)) from None
            raise sec.error("curve_key", f"a Curve public key is 40 Z85 characters or the "
                            f"NAME.key file `labbridge keys curve` made: {exc}") from None
    cert = sec.get_str("cert", None)
    return Identity(name=name, role=role, curve_key=curve, password=password, token=token,
                    cert=cert)


def is_loopback_host(host: str | None) -> bool:
    """Whether a listening host is reachable only from this machine."""
    if host is None:
        return True
    if host in ("localhost", "local", ""):
        return host != ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve to anything
    return any(addr in net for net in LOOPBACK if net.version == addr.version)
