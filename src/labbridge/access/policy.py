"""A node's access policy: roles by source address, and identities with credentials.

Protocols that carry no credentials (Pychron plain/braced/JSON/UDP, the relay, Qtegra,
PyMoDAQ, hexrotcomm) are given a role by the peer's source address: the policy holds one list
of networks per role, and an address gets the highest role whose list contains it. Links that
verify a credential (a TLS client certificate, a CurveZMQ key, a web login) name an identity,
and an identity has the role the node file gives it.

Defaults are closed: with no ``security`` section a node trusts its own machine (loopback
addresses and local callers are ``admin``) and nobody else; an empty list means nobody. UDP is
read-only (its source address can be forged and it has no handshake) except from the hosts
listed in ``udp_writers`` (default: loopback, which the kernel does not accept from outside).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from labbridge.access.model import Principal, Role

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Loopback, in both families: the machine the node runs on.
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv4-mapped IPv6 folded to IPv4 and a ``%zone`` dropped; or None."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(address: str, networks: Iterable[Network]) -> bool:
    addr = parse_address(address)
    return addr is not None and any(addr in net for net in networks)


@dataclass(frozen=True)
class Identity:
    """A named principal and the credentials that prove it."""

    name: str
    role: Role
    #: CurveZMQ public key (Z85, 40 characters).
    curve_key: str | None = None
    #: Web login: a password hash made by :func:`hash_secret` (``scrypt$...``).
    password: str | None = None
    #: Web/API token: a hash made by :func:`hash_secret` with ``kind="token"``.
    token: str | None = None
    #: TLS client certificate: the subject's common name.
    cert: str | None = None


@dataclass
class Policy:
    """Who gets which role on one node."""

    #: Networks per role, for principals with no identity.
    addresses: dict[Role, tuple[Network, ...]] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    #: Hosts whose UDP datagrams may change state.
    udp_writers: tuple[Network, ...] = ()
    #: Role of local callers (the node's private Unix sockets, in-process).
    local_role: Role = Role.ADMIN
    #: True when the node file has a ``security`` section (``labbridge check`` warns
    #: about services listening beyond loopback when it has none).
    configured: bool = False
    #: Roles already worked out, by (address, transport, identity): the policy never changes
    #: once built, and parsing an address costs more than the rest of a request's check.
    _cache: dict[tuple[str, str, str | None], Role] = field(default_factory=dict, repr=False,
                                                           compare=False)

    @classmethod
    def default(cls) -> Policy:
        """No ``security`` section: this machine is admin, everybody else is nobody."""
        return cls(addresses={Role.ADMIN: LOOPBACK}, udp_writers=LOOPBACK)

    # -- roles ---------------------------------------------------------------------------
    def address_role(self, address: str) -> Role:
        """The role the address lists give ``address`` (``"local"`` -> ``local_role``)."""
        if address == "local":
            return self.local_role
        addr = parse_address(address)
        if addr is None:
            return Role.NOBODY
        best = Role.NOBODY
        for role, nets in self.addresses.items():
            if role > best and any(addr in net for net in nets):
                best = role
        return best

    def role_of(self, principal: Principal) -> Role:
        """The role of ``principal``: its identity's if it has one, else its address's.

        Two transports are capped when no credential proved an identity: UDP at observer
        (its source can be forged) unless the address is a ``udp_writer``; the web page at
        observer (a browser on a trusted machine may be driven by any page it shows).
        """
        key = (principal.address, principal.transport, principal.identity)
        role = self._cache.get(key)
        if role is None:
            role = self._role_of(principal)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = role
        return role

    def _role_of(self, principal: Principal) -> Role:
        if principal.identity is not None:
            ident = self.identities.get(principal.identity)
            return ident.role if ident is not None else Role.NOBODY
        role = self.address_role(principal.address)
        if (principal.transport == "udp" and role > Role.OBSERVER
                and not in_networks(principal.address, self.udp_writers)):
            return Role.OBSERVER
        if principal.transport == "web" and role > Role.OBSERVER:
            return Role.OBSERVER
        return role

    def udp_may_write(self, address: str) -> bool:
        return in_networks(address, self.udp_writers)

    def grants_beyond_loopback(self) -> bool:
        """True when some non-loopback address gets a role (for exposure warnings)."""
        for nets in self.addresses.values():
            for net in nets:
                if not any(net.subnet_of(lo) for lo in LOOPBACK  # type: ignore[arg-type]
                           if net.version == lo.version):
                    return True
        return bool(self.identities)

    # -- credentials ---------------------------------------------------------------------
    def identity_for_curve_key(self, z85: str) -> Identity | None:
        for ident in self.identities.values():
            if ident.curve_key is not None and hmac.compare_digest(ident.curve_key, z85):
                return ident
        return None

    def identity_for_cert(self, common_name: str) -> Identity | None:
        for ident in self.identities.values():
            if ident.cert is not None and ident.cert == common_name:
                return ident
        return None

    def check_password(self, name: str, password: str) -> Identity | None:
        """The identity if ``password`` is right for ``name``; None otherwise.

        A wrong name costs the same as a wrong password (a dummy hash is checked), so the
        time taken does not tell which names exist.
        """
        ident = self.identities.get(name)
        stored = ident.password if ident is not None else None
        ok = verify_secret(password, stored or _DUMMY_HASH)
        return ident if ok and stored else None

    def check_token(self, token: str) -> Identity | None:
        found = None
        for ident in self.identities.values():
            if ident.token is not None and verify_secret(token, ident.token):
                found = ident
        return found

    def curve_keys(self) -> Mapping[str, Identity]:
        return {i.curve_key: i for i in self.identities.values() if i.curve_key}


# -- secrets ---------------------------------------------------------------------------------
# Passwords: scrypt (memory-hard, in the standard library). Tokens are random and long, so a
# single SHA-256 is enough for them; they are still compared in constant time.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_secret(secret: str, *, kind: str = "password") -> str:
    """A storable hash: ``scrypt$n$r$p$salt$hash`` for passwords, ``sha256$hex`` for tokens."""
    if kind == "token":
        return "sha256$" + hashlib.sha256(secret.encode("utf-8")).hexdigest()
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_hash_format(stored: str) -> str | None:
    """Why ``stored`` is not a hash :func:`verify_secret` understands, or None."""
    parts = stored.split("$")
    if parts[0] == "sha256":
        if len(parts) == 2 and len(parts[1]) == 64:
            try:
                bytes.fromhex(parts[1])
                return None
            except ValueError:
                pass
        return "expected sha256$<64 hex digits>"
    if parts[0] == "scrypt":
        if len(parts) == 6:
            try:
                n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
                base64.b64decode(parts[4], validate=True)
                base64.b64decode(parts[5], validate=True)
                if n >= 2 and n & (n - 1) == 0 and 0 < r <= 64 and 0 < p <= 16 and n <= 2**20:
                    return None
            except ValueError:
                pass
        return "expected scrypt$n$r$p$salt$hash (made by `labbridge keys passwd`)"
    return "not a password or token hash (made by `labbridge keys passwd` or `keys token`)"


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` matches ``stored`` (constant-time comparison)."""
    if check_hash_format(stored) is not None:
        return False
    parts = stored.split("$")
    if parts[0] == "sha256":
        got = hashlib.sha256(secret.encode("utf-8")).hexdigest()
        return hmac.compare_digest(got, parts[1])
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    salt, want = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    got_b = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(want),
                           maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got_b, want)


_DUMMY_HASH = ("scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
               "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
