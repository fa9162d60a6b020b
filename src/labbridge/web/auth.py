"""Who is asking the web page: sessions, login rate limits, the Host allow-list and Origin
checks, one-time login links (issue 12 item 4; ADR 0134; docs/web.md "Log in").

Pure bookkeeping, no sockets: the app (:mod:`labbridge.web.app`) passes ``now`` (monotonic
seconds) and the request's headers, and asks the node's :class:`~labbridge.access.Gate` for
roles. What the browser holds is a random session id in an HttpOnly, SameSite=Strict cookie;
everything else (who, since when, the CSRF token) stays here, bounded in number and time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import ssl
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from labbridge.access import verify_secret
from labbridge.devices.state_file import write_json_atomic

log = logging.getLogger(__name__)

#: Names a browser on this machine uses for it; always allowed as a Host (a DNS-rebinding
#: page cannot make its Host one of these: that is the name in the browser's address bar).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: The header a page sends its CSRF token in.
CSRF_HEADER = "X-CSRF-Token"


def clean(text: object, limit: int = 80) -> str:
    """``text`` fit for a log line and the audit trail: printable, one line, at most
    ``limit`` characters (a user name or Host header comes from the peer)."""
    s = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return s if len(s) <= limit else s[:limit - 3] + "..."


# -- sessions ----------------------------------------------------------------------------------
@dataclass
class Session:
    """One logged-in browser: the cookie holds ``id``; nothing else leaves the server."""

    id: str
    identity: str
    csrf: str
    address: str
    how: str  # password / token / link
    created: float
    last_used: float


class Sessions:
    """Server-side sessions, at most ``max_sessions`` (the least recently used goes first),
    each ending ``idle`` seconds after its last deliberate use (a login, a page load, a
    control action: reads and the live stream do not count) and ``lifetime`` seconds after
    the login in any case."""

    def __init__(self, *, max_sessions: int = 256, idle: float = 3600.0,
                 lifetime: float = 12 * 3600.0) -> None:
        self.max_sessions = max_sessions
        self.idle = idle
        self.lifetime = lifetime
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, identity: str, address: str, how: str, now: float) -> tuple[
            Session, list[Session]]:
        """A new session; also returns the sessions evicted to make room."""
        evicted = []
        while len(self._by_id) >= self.max_sessions:
            evicted.append(self._by_id.popitem(last=False)[1])
        s = Session(id=secrets.token_urlsafe(32), identity=identity,
                    csrf=secrets.token_urlsafe(32), address=address, how=how, created=now,
                    last_used=now)
        self._by_id[s.id] = s
        return s, evicted

    def _alive(self, s: Session, now: float) -> bool:
        return now - s.last_used < self.idle and now - s.created < self.lifetime

    def get(self, sid: str | None, now: float, *, touch: bool = False) -> Session | None:
        """The live session with this id (an ended one is removed), refreshed if ``touch``."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        if not self._alive(s, now):
            del self._by_id[sid]
            return None
        if touch:
            self.touch(s, now)
        return s

    def touch(self, s: Session, now: float) -> None:
        """A deliberate use (a control action, a page load): the idle clock restarts."""
        s.last_used = now
        if s.id in self._by_id:
            self._by_id.move_to_end(s.id)

    def end(self, sid: str) -> Session | None:
        return self._by_id.pop(sid, None)

    def expire(self, now: float) -> list[Session]:
        """Remove and return every session that has ended."""
        gone = [s for s in self._by_id.values() if not self._alive(s, now)]
        for s in gone:
            del self._by_id[s.id]
        return gone


def csrf_ok(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf.encode(),
                                                    sent.encode("utf-8", "replace"))


# -- login rate limit --------------------------------------------------------------------------
class LoginLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds from one address (IPv6: from
    one /64, which one host can fill); after that, every login from there is refused unseen
    until the window has room again. Remembers at most ``max_keys`` addresses (the least
    recently seen is forgotten first)."""

    def __init__(self, attempts: int = 10, window: float = 60.0,
                 max_keys: int = 4096) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self._failed: OrderedDict[str, deque[float]] = OrderedDict()
        #: Keys refused since their window filled (one audit line per episode).
        self._limited: set[str] = set()

    def __len__(self) -> int:
        return len(self._failed)

    @staticmethod
    def key(address: str) -> str:
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))
        return str(addr)

    def blocked(self, address: str, now: float) -> tuple[float, bool]:
        """``(0, False)`` when ``address`` may try; else ``(seconds to wait, first)``, where
        ``first`` is True for the first refusal since the address was last allowed."""
        k = self.key(address)
        q = self._failed.get(k)
        if q is not None and len(q) >= self.attempts and now - q[0] < self.window:
            first = k not in self._limited
            self._limited.add(k)
            return self.window - (now - q[0]), first
        self._limited.discard(k)
        return 0.0, False

    def forgive(self, address: str) -> None:
        """Take back the latest failure of ``address`` (an attempt counted before its
        check, which then succeeded)."""
        q = self._failed.get(self.key(address))
        if q:
            q.pop()

    def failed(self, address: str, now: float) -> None:
        """Count one failed login from ``address``."""
        k = self.key(address)
        q = self._failed.get(k)
        if q is None:
            q = self._failed[k] = deque(maxlen=self.attempts)
            while len(self._failed) > self.max_keys:
                gone, _ = self._failed.popitem(last=False)
                self._limited.discard(gone)
        self._failed.move_to_end(k)
        q.append(now)


# -- hosts and origins -------------------------------------------------------------------------
def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Name:8080"`` / ``"[::1]:80"`` / ``"name"`` -> ``("name", port or None)``, lowercase,
    without a trailing dot; None when it is not a host."""
    value = value.strip()
    if not value or any(c in value for c in "/@ \t?#\\"):
        return None
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            rest = rest[1:]
            if not rest.isdigit():
                return None
            port = int(rest)
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    elif ":" in value:  # a bare IPv6 address
        host = value
    else:
        host = value
    if port is not None and not 0 < port < 65536:
        return None
    host = host.lower().rstrip(".")
    if not host:
        return None
    try:  # one spelling per address
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return host, port


_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_origin(origin: str) -> tuple[str, str, int] | None:
    """``"http://Name:8080"`` -> ``("http", "name", 8080)``; None for ``null`` or garbage."""
    try:
        parts = urlsplit(origin.strip())
        scheme = parts.scheme.lower()
        netloc = parts.netloc
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORT or not netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment or "@" in netloc:
        return None
    hp = split_host(netloc)
    if hp is None:
        return None
    return scheme, hp[0], hp[1] if hp[1] is not None else _DEFAULT_PORT[scheme]


@dataclass
class HostRules:
    """The Host allow-list and the Origin rule of one dashboard.

    A request is served only when its ``Host`` header names an allowed host (any port): a
    page on a foreign name that resolves to this machine (DNS rebinding) sends its own name
    and is refused. A browser request that says where it comes from (``Origin``, sent with
    every POST and WebSocket handshake) must come from the page itself: the Origin's host and
    port are those of the Host header (so a page on another port of the same machine is
    foreign too), or the Origin is listed in ``allowed_origins``.
    """

    hosts: frozenset[str]
    origins: frozenset[tuple[str, str, int]] = field(default_factory=frozenset)

    @classmethod
    def build(cls, bind_host: str, allowed_hosts: Iterable[str] = (),
              allowed_origins: Iterable[str] = ()) -> HostRules:
        names = set()
        for h in (*LOOPBACK_NAMES, bind_host, *allowed_hosts):
            hp = split_host(h)
            if hp is not None and hp[0] not in ("0.0.0.0", "::"):
                names.add(hp[0])
        origins = set()
        for o in allowed_origins:
            so = split_origin(o)
            if so is not None:
                origins.add(so)
        return cls(frozenset(names), frozenset(origins))

    def host_allowed(self, host_header: str | None) -> bool:
        hp = split_host(host_header) if host_header else None
        return hp is not None and hp[0] in self.hosts

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        so = split_origin(origin)
        if so is None:
            return False
        if so in self.origins:
            return True
        hp = split_host(host_header) if host_header else None
        if hp is None or so[1] not in self.hosts:
            return False
        port = hp[1] if hp[1] is not None else _DEFAULT_PORT[so[0]]
        return (so[1], so[2]) == (hp[0], port)


# -- one-time login links ----------------------------------------------------------------------
class OneTimeLogins:
    """Login links that work once: ``{identity: sha256 hash of the token}`` from the node file.
    A used hash is remembered in ``used_file`` (when given) so that a restarted dashboard
    does not take it again."""

    def __init__(self, hashes: dict[str, str], used_file: Path | None = None) -> None:
        self.hashes = dict(hashes)
        self.used_file = used_file
        self.used: set[str] = set()
        if used_file is not None and used_file.exists():
            try:
                self.used = {str(h) for h in json.loads(used_file.read_text())}
            except (OSError, ValueError, TypeError) as exc:
                # Unreadable: take none of the links rather than all of them again.
                log.warning("cannot read %s (%s): one-time logins are off", used_file, exc)
                self.used = set(self.hashes.values())

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def take(self, token: str) -> str | None:
        """The identity whose unused link ``token`` is (the link is used up), or None."""
        found = None
        for name, stored in self.hashes.items():
            if stored not in self.used and verify_secret(token, stored):
                found = (name, stored)
        if found is None:
            return None
        self.used.add(found[1])
        if self.used_file is not None:
            try:
                write_json_atomic(self.used_file, sorted(self.used))
            except OSError as exc:
                log.warning("cannot record the used login link in %s: %s", self.used_file,
                            exc)
        return found[0]


# -- TLS -----------------------------------------------------------------------------------
def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context for the page: TLS 1.2+, this certificate, no client certificates
    (browsers log in with a password or a token instead). Raises ``ValueError`` naming the
    file that is missing or unusable."""
    for p in (cert, key):
        if not Path(p).is_file():
            raise ValueError(f"cannot read {p}: no such file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot use certificate {cert} with key {key}: {exc}") from None
    return ctx
