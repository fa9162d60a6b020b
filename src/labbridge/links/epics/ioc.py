"""The IOC embedded in a node process: pythonSoftIOC records over labbridge devices.

Threads and the event loop (ADR 0150)
-------------------------------------
EPICS runs its own threads: one CA server thread per client circuit, pvxs worker threads for
pvAccess, the scan and callback threads that process records. labbridge's devices live on the
node's one asyncio loop and are never touched from those threads. Two paths cross:

* **device -> record.** Device listeners run on the loop. An input record (ai, bi, ...) is
  updated with softioc's ``set``, which only stores the value and queues the record on EPICS's
  I/O-interrupt scan (``scanIoRequest``): no record lock is taken on the loop, no polling. An
  output record (the valve's bo, a setpoint's ao) must take its record lock to change, so the
  loop hands its latest value to one poster thread (a coalescing dict and a condition: memory
  is bounded by the number of records, a burst becomes its last value).
* **client write -> device.** A CA or PVA put processes the output record in the server's
  thread; softioc calls our ``validate`` there, which runs :meth:`EpicsIoc._write` on the loop
  with ``run_coroutine_threadsafe`` and waits for its answer (bounded by ``write_timeout``).
  The loop never waits for EPICS, so this cannot deadlock.

Access (ADR 0154): every write passes the node's gate in :meth:`EpicsIoc._write`, as the
client's socket address (EPICS ``asCheckClientIP``: a host name a CA client claims is never
believed, a user name it claims is never an identity). In front of the gate, EPICS access
security generated from the same policy (:mod:`labbridge.links.epics.acf`) gives a client
without the role a read-only channel (or none at all), so CA and PVA clients get EPICS's own
"no write access" error at once.

Refusals (ADR 0151): a write the gate or the device refuses leaves the record's value as it
was, raises a WRITE/MAJOR alarm on the record, stores the reason in ``<device>:LAST_ERROR``
and fails the put with that reason as a pvAccess error message. A software-locked valve has no
write access at all (EPICS access security follows the ``_LOCK`` record), which both
protocols report as an error before anything is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labbridge.access import DONE, FAILED, AccessDenied, Action, Gate, Principal, Role
from labbridge.devices.base import Change, Device
from labbridge.links.epics.acf import AccessFile, access_file, group_name
from labbridge.links.epics.mapping import (
    MAX_REASON,
    Binding,
    RecordSpec,
    binding_for,
    check_names,
)
from labbridge.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

#: softioc can init one IOC per process (iocInit runs once); a second start is refused.
_PROCESS_IOC: list[str] = []
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class IocSettings:
    """What the node file says about the IOC (see labbridge.node.kinds.epics)."""

    prefix: str
    host: str = "127.0.0.1"
    ca_port: int = 5064          # CA server: TCP and UDP search on one port (0 = a free one)
    pva_port: int = 5075         # pvAccess server TCP port (0 = a free one)
    pva_udp_port: int = 5076     # pvAccess search (broadcast) UDP port (0 = a free one)
    image_port: int = 0          # NTNDArray server (p4p): TCP port, 0 = any
    image_udp_port: int = 0      # NTNDArray server: search UDP port, 0 = any
    write_timeout: float = 30.0  # longest a client's write waits for the device
    gauge_alarms: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def free_port(host: str) -> int:
    """A port free for TCP and UDP on ``host`` (CA needs the same number for both)."""
    tcp, udp = hold_free_port(host)
    port = int(tcp.getsockname()[1])
    tcp.close()
    udp.close()
    return port


def hold_free_port(host: str) -> tuple[socket.socket, socket.socket]:
    """A port free for TCP and UDP on ``host``, held: the TCP and UDP sockets bound to it,
    which :func:`hold_port` explains."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((host, 0))  # a plain bind: a port nobody uses at all
        port = int(t.getsockname()[1])
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((host, port))
        except OSError as exc:
            t.close()
            u.close()
            if exc.errno == errno.EADDRINUSE:
                continue  # the UDP twin is someone's: pick again
            raise _bind_error(exc, host, port) from None
        _share(t, socket.SOCK_STREAM)
        _share(u, socket.SOCK_DGRAM)
        return t, u
    raise OSError(f"no port free for both TCP and UDP on {host}")


def hold_port(host: str, port: int, kind: int) -> socket.socket | None:
    """Keep ``port`` from other programs until EPICS binds it; None when a program holds it
    already in a way EPICS cannot share.

    EPICS binds its ports during iocInit, a second or more after they are chosen (softioc's
    import and the records come first). A program that takes a chosen port meanwhile --
    any socket's ephemeral port, another node's -- does not just move the server: a CA
    server whose UDP port is taken stops iocInit for ever (rsrv's ``cantProceed``), a PVA
    server whose UDP port is taken is silently not started. A held port is bound with
    SO_REUSEADDR (and SO_REUSEPORT for UDP), as EPICS binds its own sockets, so EPICS can
    bind it beside the hold and nobody else can; the holds are closed after iocInit.
    """
    sock = socket.socket(socket.AF_INET, kind)
    try:
        _share(sock, kind)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise _bind_error(exc, host, port) from None
    return sock


def _share(sock: socket.socket, kind: int) -> None:
    """The options EPICS sets on the sockets it binds (rsrv's TCP listener: SO_REUSEADDR;
    the name-search UDP sockets of CA and PVA: SO_REUSEADDR and SO_REUSEPORT, "datagram
    fanout", so that several IOCs of a host share port 5064)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if kind == socket.SOCK_DGRAM and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _port_in_use(host: str, port: int, kind: int) -> bool:
    """Whether a program holds ``port``; any other reason not to bind it (an address that
    is not this machine's, a port below 1024 without root) is raised as itself."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise _bind_error(exc, host, port) from None
    return False


def _bind_error(exc: OSError, host: str, port: int) -> OSError:
    return OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror or exc}")


class _Poster:
    """One thread that applies the latest value of each output record (see module doc)."""

    def __init__(self, apply: Callable[[str, Any], None]) -> None:
        self._apply = apply
        self._pending: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="epics-poster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def ident(self) -> int | None:
        """OS thread id of the poster (its record updates are not client writes)."""
        return self._thread.ident

    def post(self, key: str, value: Any) -> None:
        with self._cond:
            self._pending[key] = value
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch, self._pending = self._pending, {}
            for key, value in batch.items():
                try:
                    self._apply(key, value)
                except Exception:  # one bad value must not stop the updates of the others
                    log.exception("EPICS: cannot update %s", key)


class _Record:
    """A built record: its spec, its binding and the softioc object (or the p4p SharedPV)."""

    __slots__ = ("binding", "code", "message", "name", "obj", "spec")

    def __init__(self, name: str, spec: RecordSpec, binding: Binding) -> None:
        self.name = name
        self.spec = spec
        self.binding = binding
        self.obj: Any = None
        self.code = 0                      # this record's refusal status (output records)
        self.message: Any = None           # its text buffer, read by errSymLookup


class EpicsIoc:
    """Service ``epics_ioc``: every device of the node as records of one embedded IOC."""

    def __init__(self, name: str, devices: list[Device], settings: IocSettings,
                 gate: Gate | None = None) -> None:
        self.name = name
        self.settings = settings
        #: The node's access gate: every client write passes it (ADR 0154).
        self.gate = gate if gate is not None else Gate()
        self.bindings: list[Binding] = []
        self.skipped: list[str] = []
        for dev in devices:
            b = binding_for(dev)
            if b is None:
                self.skipped.append(dev.name)
                continue
            alarms = settings.gauge_alarms.get(dev.name)
            if alarms and hasattr(b, "alarms"):
                b.alarms = alarms
            self.bindings.append(b)
        specs = [r for b in self.bindings for r in b.records()]
        check_names(settings.prefix, specs)
        self.records: dict[str, _Record] = {}
        for b in self.bindings:
            for spec in b.records():
                self.records[spec.suffix] = _Record(self._pv(spec.suffix), spec, b)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._poster = _Poster(self._apply_out)
        #: Which client host writes, per EPICS server thread id, while its put runs (filled
        #: by the access-security trap; the socket's address, see ADR 0154).
        self._peers: dict[int, str] = {}
        self.access: AccessFile | None = None
        self._acf_path: Path | None = None
        #: The IOC's folder in the temporary directory (its access security file, which
        #: the ready file names); removed when the service stops.
        self._workdir: Path | None = None
        self._image_server: Any = None
        self._image_provider: Any = None
        self._read_refused: dict[str, float] = {}
        self._ports: dict[str, int] = {}
        #: Sockets that keep the chosen ports from other programs until iocInit.
        self._held: list[socket.socket] = []
        self._trap: Any = None
        self.writes = 0
        self.refusals = 0

    def _pv(self, suffix: str) -> str:
        return f"{self.settings.prefix}:{suffix}"

    # -- what the node reports --------------------------------------------------------------
    def pv_names(self) -> list[str]:
        return [r.name for r in self.records.values()]

    def endpoints(self) -> list[Endpoint]:
        s = self.settings
        ca = self._ports.get("ca", s.ca_port)
        pva = self._ports.get("pva", s.pva_port)
        pva_udp = self._ports.get("pva_udp", s.pva_udp_port)
        out = [
            Endpoint(self.name, "ca", s.host, ca, purpose="EPICS Channel Access server"),
            Endpoint(self.name, "udp", s.host, ca, purpose="EPICS CA name search"),
            Endpoint(self.name, "pva", s.host, pva, purpose="EPICS pvAccess server (QSRV)"),
            Endpoint(self.name, "udp", s.host, pva_udp, purpose="EPICS PVA name search"),
        ]
        if any(r.spec.rtype == "ndarray" for r in self.records.values()):
            out += [
                Endpoint(self.name, "pva", s.host,
                         self._ports.get("image", s.image_port),
                         purpose="EPICS pvAccess NTNDArray server (p4p)"),
                Endpoint(self.name, "udp", s.host,
                         self._ports.get("image_udp", s.image_udp_port),
                         purpose="EPICS PVA name search (NTNDArray server)"),
            ]
        return out

    def ready_extra(self) -> dict[str, Any]:
        """What clients need: prefix, ports (as EPICS address lists) and every PV name."""
        host = self.settings.host
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        pva_udp = [self._ports.get("pva_udp", self.settings.pva_udp_port)]
        if "image_udp" in self._ports:
            pva_udp.append(self._ports["image_udp"])
        return {
            "kind": "epics_ioc",
            "prefix": self.settings.prefix,
            "ca_port": self._ports.get("ca", self.settings.ca_port),
            "pva_port": self._ports.get("pva", self.settings.pva_port),
            "pva_udp_port": pva_udp[0],
            "image_pva_port": self._ports.get("image"),
            "image_pva_udp_port": self._ports.get("image_udp"),
            "EPICS_CA_ADDR_LIST": f"{host}:{self._ports.get('ca', self.settings.ca_port)}",
            "EPICS_PVA_ADDR_LIST": " ".join(f"{host}:{p}" for p in pva_udp),
            "pvs": self.pv_names(),
            "skipped_devices": self.skipped,
            # The EPICS access security file made from the node's policy, and what it could
            # not express (docs/epics.md, "Who may write").
            "access_file": str(self._acf_path) if self._acf_path else None,
            "access_notes": list(self.access.notes) if self.access else [],
        }

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._running:
            return
        if _PROCESS_IOC:
            raise RuntimeError(f"an EPICS IOC ({_PROCESS_IOC[0]}) already runs in this "
                               "process; EPICS initialises one IOC per process: give the "
                               "node one epics_ioc service")
        self._loop = asyncio.get_running_loop()
        self._choose_ports()
        self._set_environment()
        # Listen before the records exist: a change between building and serving is kept.
        for b in self.bindings:
            self._unsubscribe.append(b.device.subscribe(self._listener(b)))
        try:
            self._build_and_init()
        except Exception:
            self._drop_listeners()
            self._remove_workdir()
            raise
        finally:
            self._release_ports()
        _PROCESS_IOC.append(self.name)
        self._running = True
        self._poster.start()
        for b in self.bindings:
            self._show(b, b.state())
            self._schedule_sample(b)
        log.info("EPICS IOC %s: prefix %s, %d records; CA %s:%d, PVA %s:%d", self.name,
                 self.settings.prefix, len(self.records), self.settings.host,
                 self._ports["ca"], self.settings.host, self._ports["pva"])

    async def stop(self) -> None:
        """Stop moving values and refuse further writes. EPICS cannot shut an IOC down and
        start it again in one process: its servers end with the process (epicsExit)."""
        if not self._running:
            return
        self._running = False
        self._drop_listeners()
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        await asyncio.to_thread(self._poster.stop)
        if self._image_server is not None:
            srv, self._image_server = self._image_server, None
            await asyncio.to_thread(srv.stop)
        # EPICS read the access file at iocInit; the IOC keeps serving (without new
        # writes) until the process ends, but nothing reads the file again.
        self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _drop_listeners(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe.clear()

    # -- ports and environment ------------------------------------------------------------
    def _choose_ports(self) -> None:
        """Choose the free ports (0 in the node file) and hold every port until iocInit
        has bound it (:func:`hold_port`); a port another program holds is one line naming
        the field, never a server that moved or an iocInit that never returns."""
        s = self.settings
        bind_host = "0.0.0.0" if s.host in ("", "0.0.0.0") else s.host
        if bind_host == "localhost":
            bind_host = "127.0.0.1"
        ports = {"ca": s.ca_port, "pva": s.pva_port, "pva_udp": s.pva_udp_port}
        held: list[socket.socket] = []
        try:
            # EPICS falls back to another TCP port without a word when the configured one
            # is taken (and a CA server whose UDP port is taken never starts): check the
            # named ports first, as plain binds (a listener of another IOC counts too).
            for key in ("ca", "pva"):
                if ports[key] and _port_in_use(bind_host, ports[key], socket.SOCK_STREAM):
                    raise OSError(f"{key}_port {ports[key]} on {bind_host} is already in use")
            for key, port in ports.items():
                kinds = {"ca": (socket.SOCK_STREAM, socket.SOCK_DGRAM),
                         "pva": (socket.SOCK_STREAM,), "pva_udp": (socket.SOCK_DGRAM,)}[key]
                if port == 0:
                    tcp, udp = hold_free_port(bind_host)
                    ports[key] = int(tcp.getsockname()[1])
                    for kind, sock in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
                        if kind in kinds:
                            held.append(sock)
                        else:
                            sock.close()
                    continue
                for kind in kinds:
                    hold = hold_port(bind_host, port, kind)
                    if hold is None:
                        what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                        raise OSError(f"{key}_port {port} ({what}) on {bind_host} is "
                                      "already in use by a program that does not share it")
                    held.append(hold)
        except BaseException:
            for h in held:
                h.close()
            raise
        self._held = held
        self._ports.update(ports)

    def _release_ports(self) -> None:
        """Close the holds of :meth:`_choose_ports` (EPICS has bound its ports)."""
        for sock in self._held:
            sock.close()
        self._held = []

    def _set_environment(self) -> None:
        s = self.settings
        env = {"EPICS_CAS_SERVER_PORT": str(self._ports["ca"]),
               "EPICS_PVAS_SERVER_PORT": str(self._ports["pva"]),
               "EPICS_PVAS_BROADCAST_PORT": str(self._ports["pva_udp"])}
        if s.host not in ("", "0.0.0.0"):
            host = "127.0.0.1" if s.host == "localhost" else s.host
            env.update(EPICS_CAS_INTF_ADDR_LIST=host, EPICS_PVAS_INTF_ADDR_LIST=host)
            if host in _LOOPBACK:
                # Beacons stay on loopback too: nothing of a loopback IOC leaves the host.
                env.update(EPICS_CAS_BEACON_ADDR_LIST=host, EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
                           EPICS_PVAS_BEACON_ADDR_LIST=host,
                           EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO")
        os.environ.update(env)

    # -- building the IOC ------------------------------------------------------------------
    def _build_and_init(self) -> None:
        from labbridge.links.epics import _softioc as sio

        sio.ensure_loaded()
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix="labbridge-ioc-"))
        sio.set_prefix(self.settings.prefix)
        # Access security groups: read-only records stay in DEFAULT; a writable record is in
        # the group of the role its writes need, a valve also follows its own _LOCK record.
        groups: dict[str, tuple[Role, str | None]] = {}
        locks = 0
        for rec in self.records.values():
            spec = rec.spec
            if spec.rtype == "ndarray":
                continue
            initial = rec.binding.state().get(spec.suffix)
            if spec.writable:
                rec.code, rec.message = sio.register_refusal()
                fields = dict(spec.fields)
                if spec.lock is not None:
                    group = group_name(spec.needs, locks)
                    locks += 1
                    groups[group] = (spec.needs, self._pv(spec.lock))
                else:
                    group = group_name(spec.needs)
                    groups[group] = (spec.needs, None)
                fields["ASG"] = group
                rec.obj = sio.make_out(spec.rtype, spec.suffix, fields, initial,
                                       self._validator(rec), rec.code)
            else:
                rec.obj = sio.make_in(spec.rtype, spec.suffix, spec.fields, initial)
        sio.load_database()
        self.access = access_file(self.gate.policy, groups, self.gate.node)
        for note in self.access.notes:
            log.warning("EPICS IOC %s: %s", self.name, note)
        self._acf_path = workdir / "labbridge.acf"
        self._acf_path.write_text(self.access.text)
        sio.set_access_file(self._acf_path)
        sio.check_client_ip()
        self._trap = sio.trap_writes(self._peers)
        assert self._loop is not None
        sio.ioc_init(self._loop)
        if not sio.access_security_active():
            # EPICS grants everything without its access file: never serve like that.
            raise RuntimeError(f"EPICS did not load the access file {self._acf_path} (see "
                               "the IOC's messages above)")
        images = {r.name: r for r in self.records.values() if r.spec.rtype == "ndarray"}
        if images:
            self._start_image_server(images)

    def _start_image_server(self, images: dict[str, _Record]) -> None:
        from p4p.nt import NTNDArray
        from p4p.server import DynamicProvider, Server
        from p4p.server.thread import SharedPV

        s = self.settings
        for rec in images.values():
            frame = rec.binding.state().get(rec.spec.suffix)
            rec.obj = SharedPV(nt=NTNDArray(), initial=_image(frame))
        conf = {"EPICS_PVAS_SERVER_PORT": str(s.image_port),
                "EPICS_PVAS_BROADCAST_PORT": str(s.image_udp_port)}
        if s.host not in ("", "0.0.0.0"):
            host = "127.0.0.1" if s.host == "localhost" else s.host
            conf.update(EPICS_PVAS_INTF_ADDR_LIST=host)
            if host in _LOOPBACK:
                conf.update(EPICS_PVAS_BEACON_ADDR_LIST=host,
                            EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO")
        handler = _ImageChannels({n: r.obj for n, r in images.items()}, self._may_read)
        # Kept: the server holds only p4p's C++ source, and a collected provider
        # disconnects its handler (every search then goes unanswered).
        self._image_provider = DynamicProvider(f"{self.name}-images", handler)
        self._image_server = Server(providers=[self._image_provider], conf=conf, useenv=False)
        actual = self._image_server.conf()
        self._ports["image"] = int(actual["EPICS_PVAS_SERVER_PORT"])
        self._ports["image_udp"] = int(actual["EPICS_PVAS_BROADCAST_PORT"])

    def _may_read(self, name: str, peer: str) -> bool:
        """pvxs thread: whether the client at ``peer`` (``host:port``) may read ``name`` (the
        NTNDArray server has no EPICS access security of its own). A refusal is audited on
        the loop."""
        principal = Principal(address=_client_address(_peer_host(peer)), via=self.name,
                              transport="epics")
        if self.gate.may(principal, Role.OBSERVER):
            return True
        # pvxs clients retry a refused channel about once a second: one audit line per
        # client address and minute is enough (bounded: the table is cleared when large).
        now = time.monotonic()
        last = self._read_refused.get(principal.address)
        if last is not None and now - last < 60.0:
            return False
        if len(self._read_refused) > 1000:
            self._read_refused.clear()
        self._read_refused[principal.address] = now
        loop = self._loop
        if loop is not None and not loop.is_closed():
            action = Action(Role.OBSERVER, "get", name)
            reason = f"{principal.who} has no access to node {self.gate.node or 'here'}"
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.gate.refuse, principal, action, reason)
        return False

    # -- device -> records ------------------------------------------------------------------
    def _listener(self, b: Binding) -> Callable[[Change], None]:
        def on_change(change: Change) -> None:
            if self._running:
                self._show(b, b.updates(change), change.ts)

        return on_change

    def _show(self, b: Binding, values: dict[str, Any], ts: float | None = None) -> None:
        """Put device values into records; runs on the loop and never blocks on EPICS."""
        for suffix, value in values.items():
            rec = self.records.get(suffix)
            if rec is None or rec.obj is None:
                continue
            if rec.spec.rtype == "ndarray":
                if value is not None:
                    rec.obj.post(_image(value))
            elif rec.spec.writable:
                self._poster.post(suffix, value)
            else:
                rec.obj.set(_in_value(rec.spec.rtype, value), timestamp=ts)

    def _apply_out(self, suffix: str, value: Any) -> None:
        """Poster thread: move an output record to the device's value without a write."""
        rec = self.records[suffix]
        # No "unchanged?" shortcut: a client's put may be holding this record right now, and
        # its value is only known once the put ends (set() waits for the record lock).
        rec.obj.set(value)

    def _schedule_sample(self, b: Binding) -> None:
        delay = b.next_sample_in()
        if delay is None or not self._running or self._loop is None:
            return

        def due() -> None:
            if not self._running:
                return
            try:
                b.sample()
            except Exception:
                log.exception("EPICS: reading %s failed", b.device.name)
            self._schedule_sample(b)

        # The device says when its next reading completes; a floor keeps a tiny integration
        # time from turning this into a busy loop.
        self._timers[b.dev] = self._loop.call_later(max(delay, 0.01) + 0.001, due)

    # -- client write -> device ---------------------------------------------------------------
    def _validator(self, rec: _Record) -> Callable[[Any, Any], bool]:
        def validate(_record: Any, value: Any) -> bool:
            ident = threading.get_ident()
            if ident == self._poster.ident:
                return True  # the poster showing the device's own value, not a client write
            peer = self._peers.get(ident)
            reason = self._wait_for_write(rec, value, peer)
            if reason is None:
                return True
            reason = reason[:MAX_REASON]
            rec.message.value = reason.encode("utf-8", "replace")
            last = self.records.get(rec.binding.s("LAST_ERROR"))
            if last is not None and last.obj is not None:
                last.obj.set(reason)
            return False

        return validate

    def _wait_for_write(self, rec: _Record, value: Any, peer: str | None) -> str | None:
        """In an EPICS server thread: run the write on the loop and wait for its answer."""
        loop = self._loop
        if not self._running or loop is None or loop.is_closed():
            return "the node is stopping"
        try:
            fut = asyncio.run_coroutine_threadsafe(self._write(rec, value, peer), loop)
        except RuntimeError:
            return "the node is stopping"
        try:
            return fut.result(self.settings.write_timeout)
        except concurrent.futures.TimeoutError:
            # Never cancelled: an actuation under way must finish or fail by itself.
            return (f"{rec.name}: no answer from the device within "
                    f"{self.settings.write_timeout:g} s (the command goes on)")
        except Exception as exc:
            return f"{rec.name}: {exc}"

    async def _write(self, rec: _Record, value: Any, peer: str | None) -> str | None:
        """Every client write of every record passes here, on the loop: the node's gate,
        then the device. ``peer`` is the client's socket address as EPICS reports it (None
        when no put of a client is under way in the writing thread). Returns the refusal
        reason, or None when the device did it."""
        principal = Principal(address=_client_address(peer), via=self.name, transport="epics")
        action = Action(rec.spec.needs, "put", rec.name, f"value {value}")
        self.writes += 1
        reason: str | None
        if peer is None:
            # EPICS processed the record outside a client's put (nothing of the face does
            # that): with no client to judge, nothing is written.
            reason = self.gate.refuse(principal, action, "the IOC cannot tell which client "
                                      "is writing; write refused").reason
        else:
            try:
                role = self.gate.check(principal, action)
            except AccessDenied as exc:
                reason = exc.reason
            else:
                reason = await self._device_write(rec, value, principal.address)
                self.gate.record(principal, action, DONE if reason is None else FAILED,
                                 reason or "", role)
        if reason is not None:
            self.refusals += 1
            log.warning("EPICS: write %s=%r from %s refused: %s", rec.name, value,
                        peer or "-", reason)
        else:
            # Show the device's state now (an ACQUIRE returns to Idle, a written setpoint
            # reads back) without waiting for a change event that may not come.
            self._show(rec.binding, rec.binding.state())
        return reason

    async def _device_write(self, rec: _Record, value: Any, requester: str) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{rec.name}: {value!r} is not a number"
        try:
            return await rec.binding.write(rec.spec.suffix, value, requester)
        except Exception as exc:  # a device error is a refusal, never a dead IOC thread
            log.exception("EPICS: write %s=%r failed", rec.name, value)
            return f"{rec.name}: {type(exc).__name__}: {exc}"


class _ImageChannels:
    """p4p handler of the NTNDArray server: a channel only for clients with a role."""

    def __init__(self, pvs: dict[str, Any], may_read: Callable[[str, str], bool]) -> None:
        self._pvs = pvs
        self._may_read = may_read

    def testChannel(self, name: str) -> bool:  # p4p's handler API
        return name in self._pvs

    def makeChannel(self, name: str, peer: str) -> Any:  # p4p's handler API
        if name not in self._pvs or not self._may_read(name, peer):
            return None
        return self._pvs[name]


def _peer_host(peer: str) -> str:
    """``a.b.c.d:port`` or ``[v6]:port`` (pvxs's peer names) without the port."""
    if peer.startswith("[") or peer.count(":") == 1:
        return peer.rsplit(":", 1)[0]
    return peer


def _client_address(host: str | None) -> str:
    """The principal's address from the host EPICS reports: RSRV gives ``a.b.c.d`` (with
    ``asCheckClientIP``), QSRV ``a.b.c.d`` or ``[v6]``. Anything else stays as it is and
    gets no role (the policy only gives roles to IP addresses)."""
    if host is None:
        return "unknown"
    if host.startswith("[") and "]" in host:
        return host[1:host.index("]")]
    return host


def _in_value(rtype: str, value: Any) -> Any:
    if rtype in ("bi", "mbbi", "longin"):
        return int(value)
    if rtype == "ai":
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan
    if rtype == "stringin":
        return str(value)[:39]
    return str(value)


def _image(frame: Any) -> Any:
    import numpy as np

    if frame is None:
        return np.zeros((1, 1), dtype=np.uint16)
    return np.ascontiguousarray(frame)

