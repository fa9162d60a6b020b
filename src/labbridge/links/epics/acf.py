"""EPICS access security from the node's policy: the IOC's ``.acf`` file (no EPICS code here).

The node's gate stays the authority on every write (``EpicsIoc._write``); the access file is
a first line in front of it, so that an EPICS client without the role sees the channel as it
is for it -- read-only, or not readable at all -- and gets EPICS's own "no write access"
error at once (ADR 0154).

EPICS access security knows hosts, not networks: a host access group (``HAG``) is a list of
names or, with ``asCheckClientIP=1`` (which the IOC sets, so a client cannot claim another
host's name), of IPv4 addresses compared with the client's socket address. So:

* a network of at most :data:`MAX_LISTED` addresses (a /22 or longer prefix) is written as
  its addresses; a /24 gives 254 entries;
* loopback, ``127.0.0.0/8`` (the default policy's admin network), is written as
  ``127.0.0.0/24``: the addresses local clients use; a local client bound to another loopback
  address gets no access from EPICS (give it its own entry);
* a larger network cannot be listed: the rule it is part of is written for every host, and
  for that role only the gate decides (a write is refused in ``_write``; reads of that role
  cannot be refused by the IOC). :attr:`AccessFile.notes` says so, and the IOC logs it;
* IPv6 networks are left out (Channel Access is IPv4 only): their clients get no access
  through EPICS.

Rules: reads (all fields) for observers and up; writes of a writable record's ``VAL`` (EPICS
field level ``ASL0``) for the role the record needs, with ``TRAPWRITE`` so the IOC learns who
writes; a valve's write rule also needs its ``_LOCK`` record to read 0. No rule gives write
access to a record's other fields (alarm limits, ``DESC``, ``SCAN``, ``DISP``, links): they
come from the node file, not from clients.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from labbridge.access import Network, Policy, Role

#: Largest network written into a host access group as its addresses.
MAX_LISTED = 1024
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_LISTED = ipaddress.ip_network("127.0.0.0/24")
_ROLES = (Role.OBSERVER, Role.OPERATOR, Role.ADMIN)


def _hag(role: Role) -> str:
    return f"LB_{role.name}"


def group_name(needs: Role, lock_index: int | None = None) -> str:
    """The access security group of a writable record (``ASG`` field)."""
    base = f"LB_{needs.name}"
    return base if lock_index is None else f"{base}_LOCK{lock_index}"


@dataclass
class AccessFile:
    """The generated file and what it could not say."""

    text: str
    #: Per role: the IPv4 addresses listed for it (that role or higher), or None when some
    #: network is too large to list (then every host passes that rule and the gate decides).
    hosts: dict[Role, list[str] | None] = field(default_factory=dict)
    #: One line per limit that was hit (logged by the IOC, listed in the ready file).
    notes: list[str] = field(default_factory=list)


def _listed(nets: Iterable[Network], role: Role, notes: list[str]) -> list[str] | None:
    out: list[str] = []
    for net in nets:
        if net.version == 6:
            if not net.is_loopback:
                notes.append(f"{role.label} network {net} is IPv6: EPICS access security "
                             "lists IPv4 addresses only, its clients get no access over EPICS")
            continue
        if net == _LOOPBACK_V4:
            net = _LOOPBACK_LISTED
        if net.num_addresses > MAX_LISTED:
            notes.append(f"{role.label} network {net} has more than {MAX_LISTED} addresses, "
                         f"too many to list in EPICS access security: every host passes the "
                         f"{role.label} rule of the IOC and only labbridge's gate refuses "
                         "writes (reads of this role cannot be refused)")
            return None
        out.extend(str(a) for a in (net.hosts() if net.prefixlen < 31 else net))
    return out


def role_hosts(policy: Policy, notes: list[str] | None = None) -> dict[Role, list[str] | None]:
    """Per role, the addresses that have it or a higher one (None: cannot be listed)."""
    notes = [] if notes is None else notes
    per_role = {r: _listed(policy.addresses.get(r, ()), r, notes) for r in _ROLES}
    out: dict[Role, list[str] | None] = {}
    for role in _ROLES:
        parts = [per_role[r] for r in _ROLES if r >= role]
        if any(p is None for p in parts):
            out[role] = None
        else:
            out[role] = list(dict.fromkeys(a for p in parts for a in p or ()))
    return out


def _rule(level: int, access: str, hosts: list[str] | None, role: Role,
          calc: str | None = None) -> list[str]:
    """One RULE: none when nobody has the role, no HAG when everyone passes."""
    if hosts is not None and not hosts:
        return []
    conds = [] if hosts is None else [f"HAG({_hag(role)})"]
    if calc is not None:
        conds.append(f'CALC("{calc}")')
    head = f"    RULE({level}, {access})"
    return [head] if not conds else [head + " {", *(f"        {c}" for c in conds), "    }"]


def access_file(policy: Policy, writable: dict[str, tuple[Role, str | None]],
                node: str = "") -> AccessFile:
    """The ACF for ``writable``: group name -> (role its writes need, lock PV or None)."""
    notes: list[str] = []
    hosts = role_hosts(policy, notes)
    lines = [f"# EPICS access security of node {node or '?'}, generated by labbridge from the",
             "# node file's security section (docs/epics.md); rewritten at every start."]
    for role in _ROLES:
        listed = hosts[role]
        if listed:
            lines.append(f"HAG({_hag(role)}) {{ " + ", ".join(listed) + " }")
    read = _rule(1, "READ", hosts[Role.OBSERVER], Role.OBSERVER)
    lines += ["ASG(DEFAULT) {", *read, "}"]
    for group, (needs, lock_pv) in writable.items():
        lines.append(f"ASG({group}) {{")
        if lock_pv is not None:
            lines.append(f'    INPA("{lock_pv}")')
        lines += read
        lines += _rule(0, "WRITE, TRAPWRITE", hosts[needs], needs,
                       "A=0" if lock_pv is not None else None)
        lines.append("}")
    return AccessFile("\n".join(lines) + "\n", hosts, notes)
