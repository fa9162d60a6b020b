"""Access control for a node: roles, principals, one gate per node and its audit trail.

ARCHITECTURE.md, "Access and faces": every link hands the caller (an identity proved by a key,
a certificate or a login; or only a source address for protocols that carry none) with each
request that changes state to the node's :class:`Gate`; devices never see the network and
links never decide access. docs/security.md is the user's guide; docs/adr/0100 the design.
"""

from labbridge.access.gate import AuditSink, Gate
from labbridge.access.model import (
    DONE,
    FAILED,
    REFUSED,
    AccessDenied,
    Action,
    AuditEvent,
    Principal,
    Role,
)
from labbridge.access.policy import (
    LOOPBACK,
    Identity,
    Network,
    Policy,
    check_hash_format,
    hash_secret,
    in_networks,
    parse_address,
    verify_secret,
)

__all__ = [
    "DONE", "FAILED", "LOOPBACK", "REFUSED", "AccessDenied", "Action", "AuditEvent",
    "AuditSink", "Gate", "Identity", "Network", "Policy", "Principal", "Role",
    "check_hash_format", "hash_secret", "in_networks", "parse_address", "verify_secret",
]
