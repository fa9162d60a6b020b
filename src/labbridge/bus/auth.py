"""Who may use a bus socket: CurveZMQ keys, and a ZAP handler that asks the node's gate
(docs/security.md, "The bus"; ADR 0127).

Every socket a node *binds* on the bus (notifier PUB/REP, dashboard server PUB/REP) carries a
:class:`SocketAuth`. It sets the socket's ZAP domain, so that ZeroMQ asks the process's ZAP
handler (:class:`_ZapServer`, served on the asyncio loop, no thread) about every new
connection, before a single message passes:

* with the node's Curve key pair (``security.curve.secret_key``) the socket is a CURVE server:
  traffic is encrypted and a client must prove a public key; the key must be the
  ``curve_key`` of an identity in ``security.identities`` whose role is enough (observer to
  subscribe or to ask), or the node's own key (the node itself: its role is ``local``);
* without it the socket speaks plain ZeroMQ (NULL) and the handler judges the peer's source
  address, as for every protocol that carries no credentials: an address with no role (by
  default, anything but loopback) is refused.

Every refusal is audited through the gate, once per peer and credential while it keeps
retrying (:data:`REAUDIT_AFTER`). A client that has no key at all cannot reach the ZAP handler
of a Curve socket (ZeroMQ ends the handshake on the mechanism mismatch); the socket's events
show it, and it is audited too, with its address when the connection was still open when we
read the event.

Clients give a :class:`ClientKeys` (the server's public key and their own pair) to the
Subscriber, the Recorder and the DashboardClient, or a :class:`SecureEndpoint` (a URL string
carrying its keys) wherever a URL goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import re
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.z85

from labbridge.access import AccessDenied, Action, Gate, Principal, Role
from labbridge.bus import sockets

log = logging.getLogger(__name__)

#: Where ZeroMQ sends ZAP requests (RFC 27): one handler per context.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: A refused peer (address and credential) that keeps retrying is audited again only after
#: it stayed away this long (seconds).
REAUDIT_AFTER = 600.0
#: Refused peers remembered per socket (the oldest is forgotten first).
MAX_REMEMBERED = 1024
#: ZAP user ids (the ``User-Id`` property of every message from an admitted peer).
_LOCAL_USER = b"local"
_IDENTITY_PREFIX = b"id:"
_Z85_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       b".-:+=^!/*?&<>()[]{}@%$#")
_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"?([^"\s]*)"?\s*$')
#: Largest key file read (a key file is about 150 bytes).
MAX_KEY_FILE = 64 * 1024
_DOMAINS = itertools.count(1)


class KeyFileError(ValueError):
    """A key file or key cannot be used; the message is one line naming it and what to do."""


# -- keys ---------------------------------------------------------------------------------------
def is_z85_key(text: str | bytes) -> bool:
    """Whether ``text`` is a 40-character Z85 Curve key."""
    b = text.encode("ascii", "replace") if isinstance(text, str) else text
    return len(b) == 40 and set(b) <= _Z85_CHARS


@dataclass(frozen=True)
class CurveKeyPair:
    """A Curve key pair, both keys in Z85 (40 bytes each)."""

    public: bytes
    secret: bytes
    #: The file it came from (for messages), or "".
    source: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"CurveKeyPair(public={self.public.decode()!r}, source={self.source!r})"

    @classmethod
    def generate(cls) -> CurveKeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a Curve socket: the server's public key and its own pair."""

    server_key: bytes
    pair: CurveKeyPair

    def apply(self, sock: zmq.Socket[Any] | zmq.asyncio.Socket) -> None:
        """Make ``sock``'s next ``connect`` a Curve client connection."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.pair.secret)


def apply_client(sock: zmq.Socket[Any] | zmq.asyncio.Socket, keys: ClientKeys | None) -> None:
    """Set ``sock`` up for its next ``connect``: Curve with ``keys``, or plain (NULL)."""
    if keys is not None:
        keys.apply(sock)
    else:
        sock.setsockopt(zmq.CURVE_SERVER, 0)  # back to the NULL mechanism


class SecureEndpoint(str):
    """A ZeroMQ URL that carries the Curve keys to reach it: a ``str``, so it goes wherever a
    URL goes (the web dashboard's subscriptions), and a Subscriber uses its keys."""

    curve: ClientKeys | None

    def __new__(cls, url: str, curve: ClientKeys | None) -> SecureEndpoint:
        obj = super().__new__(cls, url)
        obj.curve = curve
        return obj


def keys_of(endpoint: object) -> ClientKeys | None:
    """The keys a :class:`SecureEndpoint` carries (None for a plain URL)."""
    keys = getattr(endpoint, "curve", None)
    return keys if isinstance(keys, ClientKeys) else None


def _missing(path: Path, *, secret: bool) -> KeyFileError:
    """A missing key file: the command that makes it, with the name and the directory the
    node file expects (``keys/valve-controller.key_secret`` -> ``labbridge keys curve
    valve-controller --dir keys``)."""
    name = path.name
    for suffix in (".key_secret", ".key"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            break
    else:
        return KeyFileError(f"{path}: no such file (make a key pair with `labbridge keys curve "
                            "NAME --dir DIR`)")
    folder = os.path.normpath(path.parent)
    try:
        rel = os.path.relpath(folder)
        if not rel.startswith(".."):
            folder = rel
    except ValueError:
        pass
    make = f"`labbridge keys curve {name} --dir {folder}`"
    if secret:
        return KeyFileError(f"{path}: no such file; make this computer's key pair with {make}")
    return KeyFileError(f"{path}: no such file; it is the public key of {name}: copy "
                        f"{name}.key from the computer that made it, or make the pair here "
                        f"with {make}")


def _read_key_file(path: Path) -> dict[str, bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise _missing(path, secret=False) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is not a key file (larger than {MAX_KEY_FILE} bytes)")
    found: dict[str, bytes] = {}
    for line in data.decode("ascii", "replace").splitlines():
        m = _KEY_LINE.match(line)
        if m:
            key = m.group(2).encode("ascii", "replace")
            if not is_z85_key(key):
                raise KeyFileError(f"{path}: the {m.group(1)}-key is not 40 Z85 characters")
            found[m.group(1)] = key
    return found


def read_public_key(value: str, base: Path | None = None) -> bytes:
    """A Curve public key: the 40-character key itself, or a key file (``NAME.key``, or a
    ``NAME.key_secret``: only its public key is used) relative to ``base``."""
    text = value.strip()
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if is_z85_key(text) and not path.exists():
        return text.encode("ascii")
    found = _read_key_file(path)
    if "public" not in found:
        raise KeyFileError(f"{path} holds no public-key line (is it a key made by "
                           "`labbridge keys curve`?)")
    return found["public"]


def read_secret_key(path: str | Path) -> CurveKeyPair:
    """The key pair in a secret key file (``NAME.key_secret``), which must be a regular file
    of this user, readable by nobody else (mode 600 or 400)."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _missing(p, secret=True) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{p} is not a regular file")
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{p} belongs to uid {st.st_uid}, not to this user (uid "
                           f"{os.geteuid()}): a secret key must be the own file of the user "
                           "running labbridge")
    if st.st_mode & 0o077:
        raise KeyFileError(f"{p} can be read by other users (mode {st.st_mode & 0o777:o}); a "
                           f"secret key must be private: chmod 600 {p}")
    found = _read_key_file(p)
    secret = found.get("secret")
    if secret is None:
        raise KeyFileError(f"{p} holds no secret-key line (give the NAME.key_secret file, "
                           "not the public NAME.key)")
    public = zmq.curve_public(secret)
    if "public" in found and not hmac.compare_digest(found["public"], public):
        raise KeyFileError(f"{p}: its public-key does not belong to its secret-key")
    return CurveKeyPair(public, secret, str(p))


def _create(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte (never readable by others on the
    way); an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have taken bits away


def write_key_pair(directory: Path, name: str) -> CurveKeyPair:
    """A new key pair as ``labbridge keys curve`` writes it: ``NAME.key_secret`` (mode 600)
    and ``NAME.key`` (the public key) in ``directory`` (created with mode 700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = CurveKeyPair.generate()
    pub, sec = pair.public.decode("ascii"), pair.secret.decode("ascii")
    secret_path = directory / f"{name}.key_secret"
    _create(secret_path, f"# labbridge CurveZMQ SECRET key of {name}: keep it private\n"
                         f'public-key = "{pub}"\nsecret-key = "{sec}"\n', 0o600)
    _create(directory / f"{name}.key", f"# labbridge CurveZMQ public key of {name}\n"
                                        f'public-key = "{pub}"\n', 0o644)
    return CurveKeyPair(pair.public, pair.secret, str(secret_path))


# -- the server side -------------------------------------------------------------------------
def _z85(raw: bytes) -> str:
    return zmq.utils.z85.encode(raw).decode("ascii") if len(raw) == 32 else raw.hex()


def _prop(frame: zmq.Frame, name: str) -> str | None:
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None


class SocketAuth:
    """Access to one bound bus socket: Curve (with the node's key pair) or plain, judged by
    the node's gate through ZAP. Call :meth:`apply` before binding, :meth:`release` after
    closing the socket."""

    def __init__(self, gate: Gate, via: str, action: Action,
                 curve: CurveKeyPair | None = None) -> None:
        self.gate = gate
        self.via = via
        self.action = action
        self.curve = curve
        self.domain = f"labbridge-{os.getpid()}-{next(_DOMAINS)}".encode("ascii")
        self._server: _ZapServer | None = None
        #: (address, credential) of refused peers -> when last seen (monotonic).
        self._refused: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: Connections accepted on a Curve socket (fd -> peer address, None when already
        #: gone when we looked), to name a peer that came without a key.
        self._accepted: dict[int, str | None] = {}
        self._failures: deque[int] = deque()
        self._watch: asyncio.Task[None] | None = None
        self._mon: sockets.Monitor | None = None
        self.admitted = 0
        self.refused = 0

    @property
    def mechanism(self) -> str:
        return "curve" if self.curve is not None else "null"

    @property
    def mechanism_transport(self) -> str:
        """The principal's transport on this socket (``curve`` or plain ``tcp``)."""
        return "curve" if self.curve is not None else "tcp"

    # -- lifecycle ---------------------------------------------------------------------------
    def apply(self, sock: zmq.asyncio.Socket) -> None:
        """Make ``sock`` a Curve server (when the node has a key pair) whose every connection
        is judged by the ZAP handler; call before ``bind``."""
        if self.curve is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, self.domain)
        # No ZAP handler, no connection (libzmq would otherwise admit everyone)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self._server = _server_for(sock.context)
        self._server.add(self)

    def start(self) -> None:
        """Serve ZAP requests on the running loop (idempotent)."""
        if self._server is not None:
            self._server.ensure()

    def unwatch(self) -> None:
        """Stop following the socket's events; call *before* closing the socket (a monitor
        left on a closed socket blocks ZeroMQ's I/O thread: ADR 0126)."""
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
        if self._mon is not None:
            self._mon.close()
            self._mon = None

    def release(self) -> None:
        """Forget the socket (after closing it): its domain leaves the ZAP handler."""
        self.unwatch()
        if self._server is not None:
            self._server.remove(self)
            self._server = None
        self._accepted.clear()

    # -- decisions (called by the ZAP handler) -----------------------------------------------
    def authorize(self, address: str, mechanism: bytes,
                  credentials: list[bytes]) -> tuple[bool, bytes]:
        """Admit (True, user id) or refuse (False, b"") one connection."""
        if mechanism == b"CURVE" and self.curve is not None and credentials:
            return self._curve(address, credentials[0])
        if mechanism == b"NULL" and self.curve is None:
            principal = Principal(address, self.via, "tcp")
            return self._judge(principal, (address, ""), None)
        return self._refuse(Principal(address, self.via, self.mechanism_transport),
                            (address, mechanism.decode("ascii", "replace")),
                            f"{mechanism.decode('ascii', 'replace')} is not what this socket "
                            f"speaks ({self.mechanism})")

    def _curve(self, address: str, raw: bytes) -> tuple[bool, bytes]:
        key = _z85(raw)
        assert self.curve is not None
        if hmac.compare_digest(key.encode("ascii"), self.curve.public):
            # the node's own key pair: the node itself (its own recorder, a local tool)
            return self._judge(Principal("local", self.via, "local"), ("local", key),
                               _LOCAL_USER)
        ident = self.gate.policy.identity_for_curve_key(key)
        if ident is None:
            return self._refuse(Principal(address, self.via, "curve"), (address, key),
                                f"Curve key {key[:8]}... is not the curve_key of any identity "
                                f"in the security section of node {self.gate.node or 'here'}")
        principal = Principal(address, self.via, "curve", identity=ident.name)
        return self._judge(principal, (address, key),
                           _IDENTITY_PREFIX + ident.name.encode("utf-8"))

    def _judge(self, principal: Principal, peer: tuple[str, str],
               user: bytes | None) -> tuple[bool, bytes]:
        if self.gate.may(principal, self.action.needs):
            self.admitted += 1
            return True, user or b""
        self.refused += 1
        if self._first_refusal(peer):
            with contextlib.suppress(AccessDenied):
                self.gate.check(principal, self.action)  # audits the refusal
        return False, b""

    def _refuse(self, principal: Principal, peer: tuple[str, str],
                reason: str) -> tuple[bool, bytes]:
        self.refused += 1
        if self._first_refusal(peer):
            self.gate.refuse(principal, self.action, reason)
        return False, b""

    def _first_refusal(self, peer: tuple[str, str]) -> bool:
        """True when ``peer`` is to be audited: not refused lately (it is a new episode, not
        one more retry of a client that keeps reconnecting)."""
        now = time.monotonic()
        last = self._refused.pop(peer, None)
        self._refused[peer] = now
        while len(self._refused) > MAX_REMEMBERED:
            self._refused.popitem(last=False)
        return last is None or now - last >= REAUDIT_AFTER

    # -- requests (REP sockets) ----------------------------------------------------------------
    def principal_of(self, frame: zmq.Frame) -> Principal:
        """Who sent ``frame`` (a request received with ``copy=False``)."""
        address = _prop(frame, "Peer-Address") or "unknown"
        user = (_prop(frame, "User-Id") or "").encode("utf-8")
        if user == _LOCAL_USER:
            return Principal("local", self.via, "local")
        if user.startswith(_IDENTITY_PREFIX):
            return Principal(address, self.via, "curve",
                             identity=user[len(_IDENTITY_PREFIX):].decode("utf-8"))
        return Principal(address, self.via, "tcp")

    # -- peers without a key (Curve sockets) ---------------------------------------------------
    #: The socket events :meth:`on_event` needs.
    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

    def on_event(self, kind: int, value: int, peer: Any = None) -> None:
        """One event of the socket (from its monitor). On a Curve socket a handshake that
        fails before the ZAP handler could judge it -- a client with no key (the mechanisms
        differ) or with a wrong server key (the client's first message does not decrypt) --
        is audited as a refusal, naming the peer of the connection that ends next.
        ``peer``: the address of an accepted connection if the caller already looked."""
        if self.curve is None:
            return
        if kind == zmq.EVENT_ACCEPTED:
            if peer is None:
                peer = sockets.peer_name(value)
            self._accepted[value] = _host(peer)
            if len(self._accepted) > 4 * MAX_REMEMBERED:  # fds we never saw end
                self._accepted.pop(next(iter(self._accepted)))
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if len(self._failures) < MAX_REMEMBERED:
                self._failures.append(value)
        elif kind == zmq.EVENT_DISCONNECTED:
            address = self._accepted.pop(value, None) or "unknown"
            if self._failures:
                # libzmq raises the failure and then the end of the same connection, from
                # one I/O thread: the next end is that connection's
                code = self._failures.popleft()
                what, reason = _FAILURES.get(code, ("handshake", ""))
                if not reason:
                    reason = f"the Curve handshake failed (ZMTP error {code:#x})"
                self._refuse(Principal(address, self.via, "curve"), (address, what), reason)

    def watch(self, sock: zmq.asyncio.Socket) -> None:
        """Follow ``sock``'s events for :meth:`on_event` (for sockets that have no monitor of
        their own; a Curve socket only; inside a running loop)."""
        if self.curve is None or self._watch is not None:
            return
        mon = sockets.Monitor(sock, self.EVENTS)
        self._mon = mon
        self._watch = asyncio.get_running_loop().create_task(
            self._follow(mon.socket), name=f"{self.via}-handshakes")

    async def _follow(self, mon: zmq.asyncio.Socket) -> None:
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                event = parse_monitor_message(await mon.recv_multipart())
            except zmq.ZMQError:
                return
            try:
                self.on_event(int(event["event"]), int(event["value"]))
            except Exception:
                log.exception("%s: handshake event failed", self.via)


#: Handshake failures of a Curve socket that no ZAP request saw: (kind, audit reason).
_FAILURES: dict[int, tuple[str, str]] = {
    int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH): (
        "NULL", "connected without a Curve key; this bus socket admits Curve clients only "
                "(give the client server_key and client_key, or --server-key and "
                "--client-key)"),
    int(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC): (
        "server-key", "the Curve handshake did not decrypt: the client's server_key is not "
                      "this node's public key"),
}


def _host(peer: Any) -> str | None:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


# -- the ZAP handler --------------------------------------------------------------------------
class _ZapServer:
    """The ZAP handler of one ZeroMQ context: a REP socket on :data:`ZAP_ENDPOINT`, read on
    the asyncio loop through its file descriptor (``loop.add_reader``; no thread).

    It is bound once and stays bound while the context lives: libzmq frees an inproc address
    only when its reaper thread gets to the closed socket, so closing and binding again (a
    node stopped and another started, each test on its own loop) would race it. With no bus
    socket left, nothing sends it requests; an unknown domain is refused.
    """

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self.guards: dict[bytes, SocketAuth] = {}
        self.sock: zmq.Socket[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self.requests = 0

    def add(self, guard: SocketAuth) -> None:
        self.guards[guard.domain] = guard
        try:
            self.ensure()
        except BaseException:
            self.guards.pop(guard.domain, None)
            raise

    def remove(self, guard: SocketAuth) -> None:
        if self.guards.get(guard.domain) is guard:
            del self.guards[guard.domain]

    def ensure(self) -> None:
        """Bind the handler if needed, and read it on the running loop (if one runs)."""
        if self.sock is None:
            sock: zmq.Socket[bytes] = zmq.Context.shadow(self.ctx.underlying).socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise sockets.BusError(
                    f"cannot start the bus's access checks: {ZAP_ENDPOINT}: {exc.strerror} "
                    "(another ZAP handler runs in this process's ZeroMQ context)") from None
            self.sock = sock
            self._fd = int(sock.getsockopt(zmq.FD))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the first start() inside a loop attaches it
        if self.loop is loop:
            return
        old, self.loop = self.loop, loop
        assert self._fd is not None
        if old is not None and not old.is_closed():
            with contextlib.suppress(Exception):
                old.remove_reader(self._fd)
        loop.add_reader(self._fd, self._drain)
        loop.call_soon(self._drain)  # what came while no loop watched

    def _drain(self) -> None:
        """Answer every queued request (ZeroMQ's descriptor signals edges: read until the
        socket says there is nothing more), a bounded batch per turn of the loop."""
        sock = self.sock
        if sock is None or sock.closed:
            return
        try:
            for _ in range(256):
                if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    return
                frames = sock.recv_multipart(zmq.NOBLOCK)
                try:
                    reply = self.answer(frames)
                except Exception:  # a reply must always go back, or the REP socket wedges
                    log.exception("bus access checks failed on a request")
                    reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500",
                             b"internal error", b"", b""]
                sock.send_multipart(reply, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM or sock.closed:
                if self.loop is not None and not self.loop.is_closed() \
                        and self._fd is not None:
                    with contextlib.suppress(Exception):
                        self.loop.remove_reader(self._fd)
                return
            log.warning("bus access checks: %s", exc)
        if self.loop is not None:  # more is waiting: after the rest of the loop had a turn
            self.loop.call_soon(self._drain)

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one request."""
        self.requests += 1
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad request",
                    b"", b""]
        _, request_id, domain, address, _routing_id, mechanism, *credentials = frames
        guard = self.guards.get(domain)
        if guard is None:  # a socket we do not know: closed
            return [b"1.0", request_id, b"400", b"unknown domain", b"", b""]
        ok, user = guard.authorize(address.decode("ascii", "replace"), mechanism, credentials)
        if ok:
            return [b"1.0", request_id, b"200", b"OK", user, b""]
        return [b"1.0", request_id, b"400", b"access denied", b"", b""]


_SERVERS: dict[int, _ZapServer] = {}


def _server_for(ctx: zmq.Context[Any]) -> _ZapServer:
    server = _SERVERS.get(id(ctx))
    if server is None or server.ctx is not ctx:
        for key in [k for k, s in _SERVERS.items() if s.ctx.closed]:
            del _SERVERS[key]
        server = _ZapServer(ctx)
        _SERVERS[id(ctx)] = server
    return server


def server_auth(gate: Gate | None, via: str, verb: str,
                curve: CurveKeyPair | None) -> SocketAuth:
    """The :class:`SocketAuth` of a bound bus socket: observers may ``verb`` (subscribe,
    request); ``gate`` None is the default policy (this machine only)."""
    return SocketAuth(gate if gate is not None else Gate(), via,
                      Action(Role.OBSERVER, verb, via), curve)

