"""Gates for tests whose peers use made-up lab addresses (10.0.0.9, 192.168.1.10...)."""

from __future__ import annotations

import ipaddress

from labbridge.access import LOOPBACK, Gate, Policy, Role


def gate_for(*networks: str, role: Role = Role.ADMIN, node: str = "test",
             udp_writers: tuple[str, ...] = ()) -> Gate:
    """A gate giving ``role`` to ``networks`` (and admin to loopback, as by default)."""
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
    addresses = {Role.ADMIN: LOOPBACK}
    addresses[role] = addresses.get(role, ()) + nets
    writers = LOOPBACK + tuple(ipaddress.ip_network(n, strict=False) for n in udp_writers)
    return Gate(Policy(addresses=addresses, udp_writers=writers, configured=True), node=node)
