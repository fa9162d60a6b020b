"""Network namespaces and kernel fault injection for the fault suite (issue 16; ADR 0160).

One :class:`NetNS` is one test's private network: a namespace ``lbf-<pid>-<n>`` joined to the
test process's namespace by a veth pair with a /30 from the benchmarking range 198.18.0.0/15
(RFC 2544; never routed, never a lab's addresses), chosen from the pid and a per-process
counter so parallel test runs on one machine never pick the same pair of addresses::

    test process (root namespace)              namespace lbf-<pid>-<n>
    host_ip 198.18.x.(4k+1) -- veth --------- ns_ip 198.18.x.(4k+2)   <- the node binds here
                              ^ faults: nftables in the namespace (both directions),
                                tc tbf on the namespace's veth (node -> test direction)

Faults are nftables rules in the namespace's own table, matched on its veth only (the
namespace's loopback is never touched, so a local client there still reaches the node):

* ``partition()``: drop everything in both directions;
* ``loss(percent)``: ``numgen random mod 100 < percent drop``, each direction independently;
* ``reset(port)``: every TCP segment to or from ``port`` is answered ``reject with tcp reset``;
* ``slow(rate)``: ``tc qdisc ... tbf`` on the namespace's veth egress (netem does not exist in
  this kernel: CONFIG_NET_SCH_NETEM is not set; tbf, htb and pfifo are built in).

``heal()`` removes every fault. :meth:`NetNS.destroy` (a finalizer) kills what runs in the
namespace and deletes it, which also deletes both veth ends. :func:`clean_stale` removes
namespaces left by fault-suite processes that died.

Every command here is a real ``ip``/``nft``/``tc`` call that must succeed; a failure raises
:class:`NetError` naming the command and what it printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence

PREFIX = "lbf"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
#: RFC 2544 benchmarking range: 2**15 /30 subnets.
BASE = ipaddress.IPv4Network("198.18.0.0/15")
_counter = itertools.count()

TOOLS = ("ip", "nft", "tc")


class NetError(RuntimeError):
    """A namespace or fault command failed."""


def run(*cmd: str, check: bool = True, timeout: float = 10.0) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NetError(f"{cmd[0]} is not installed (apt-get install -y nftables iproute2; "
                       ".ci/run does it)") from None
    if check and out.returncode != 0:
        raise NetError(f"{' '.join(cmd)} failed ({out.returncode}): "
                       f"{(out.stderr or out.stdout).strip()}")
    return out.stdout


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _used_addresses() -> set[ipaddress.IPv4Address]:
    used = set()
    for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", run("ip", "-o", "-4", "addr")):
        used.add(ipaddress.IPv4Address(m.group(1)))
    return used


def _pick_subnet() -> tuple[int, ipaddress.IPv4Network]:
    """A /30 for this process's next namespace: block ``(pid mod 1024) * 32 + n mod 32``,
    skipping any whose addresses are already on an interface (a stale run)."""
    pid = os.getpid()
    used = _used_addresses()
    for _ in range(32):
        n = next(_counter)
        block = (pid % 1024) * 32 + n % 32
        net = ipaddress.IPv4Network((int(BASE.network_address) + 4 * block, 30))
        hosts = list(net.hosts())
        if not (set(hosts) & used):
            return n, net
    raise NetError("no free /30 in 198.18.0.0/15 for this process (32 namespaces in use?)")


class NetNS:
    """One namespace with a veth to the test process; see the module docstring."""

    def __init__(self) -> None:
        self.n, self.net = _pick_subnet()
        self.name = f"{PREFIX}-{os.getpid()}-{self.n}"
        tag = f"{os.getpid():x}{self.n:02x}"[-10:]
        self.host_if = f"lf{tag}h"
        self.ns_if = f"lf{tag}n"
        host, ns = list(self.net.hosts())
        self.host_ip = str(host)
        self.ns_ip = str(ns)
        self.faults: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self._created = False

    def __repr__(self) -> str:
        return f"<NetNS {self.name} {self.ns_ip}>"

    # -- lifecycle ------------------------------------------------------------------------
    def create(self) -> NetNS:
        run("ip", "netns", "add", self.name)
        self._created = True
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        self.ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.ip("link", "set", self.ns_if, "up")
        self.ip("link", "set", "lo", "up")
        # The namespace's own filter table: chains that accept by default and carry the
        # fault rules of the moment (flushed by heal()).
        self.nft(f"add table inet {PREFIX}")
        for chain, hook in (("fin", "input"), ("fout", "output")):
            self.nft(f"add chain inet {PREFIX} {chain} "
                     f"{{ type filter hook {hook} priority -10 ; policy accept ; }}")
        return self

    def destroy(self) -> None:
        """Stop every process started in the namespace, then delete it (and the veth)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self.procs.clear()
        if self._created:
            run("ip", "netns", "del", self.name, check=False)
            self._created = False
        # The host end goes with its peer; remove it if a half-built namespace left it.
        run("ip", "link", "del", self.host_if, check=False)

    # -- commands -------------------------------------------------------------------------
    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.name, *args)

    def nft(self, rule: str) -> str:
        return run("ip", "netns", "exec", self.name, "nft", rule)

    def tc(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.name, "tc", *args)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def popen(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """Start ``cmd`` inside the namespace; killed by :meth:`destroy`."""
        p: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            [*self.exec_prefix(), *cmd], text=True, **kw)
        self.procs.append(p)
        return p

    # -- faults ---------------------------------------------------------------------------
    def _rule(self, chain: str, rule: str) -> None:
        self.nft(f"add rule inet {PREFIX} {chain} {rule}")

    def _both(self, match: str, verdict: str) -> None:
        self._rule("fin", f'iifname "{self.ns_if}" {match} {verdict}'.replace("  ", " "))
        self._rule("fout", f'oifname "{self.ns_if}" {match} {verdict}'.replace("  ", " "))

    def partition(self) -> None:
        """Drop every packet on the veth, both directions (a pulled cable, a dead switch)."""
        self._both("", "drop")
        self.faults.append("partition")

    def loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets at random, each direction independently."""
        if not 0 < percent < 100:
            raise ValueError("percent must be in 1..99")
        self._both(f"numgen random mod 100 < {percent}", "drop")
        self.faults.append(f"loss {percent}%")

    # A reset rule must let the resets it makes pass: the reply to a segment rejected on the
    # way in leaves through the output hook, where the other rule would swallow it.
    _NOT_RST = "tcp flags & rst == 0"

    def reset(self, port: int) -> None:
        """Answer every TCP segment to or from ``port`` (on the node's side) with a reset
        sent to its sender: each end's connection dies as soon as it sends or receives a
        segment, and new connections are refused."""
        self._rule("fin", f'iifname "{self.ns_if}" tcp dport {port} {self._NOT_RST} '
                   "reject with tcp reset")
        self._rule("fout", f'oifname "{self.ns_if}" tcp sport {port} {self._NOT_RST} '
                   "reject with tcp reset")
        self.faults.append(f"reset :{port}")

    def reset_peer(self, port: int) -> None:
        """The same for connections the node opens to ``port`` of the test process."""
        self._rule("fin", f'iifname "{self.ns_if}" tcp sport {port} {self._NOT_RST} '
                   "reject with tcp reset")
        self._rule("fout", f'oifname "{self.ns_if}" tcp dport {port} {self._NOT_RST} '
                   "reject with tcp reset")
        self.faults.append(f"reset peer :{port}")

    def slow(self, rate: str = "64kbit", burst: str = "4kb", latency: str = "200ms") -> None:
        """Limit the node -> test direction to ``rate`` (tc tbf on the namespace's veth)."""
        self.tc("qdisc", "replace", "dev", self.ns_if, "root", "tbf", "rate", rate, "burst",
                burst, "latency", latency)
        self.faults.append(f"slow {rate}")

    def heal(self) -> None:
        """Remove every fault: flush both chains, delete the qdisc."""
        self.nft(f"flush chain inet {PREFIX} fin")
        self.nft(f"flush chain inet {PREFIX} fout")
        if any(f.startswith("slow") for f in self.faults):
            self.tc("qdisc", "del", "dev", self.ns_if, "root")
        self.faults.clear()

    def sent_bytes(self) -> int:
        """Bytes the slow-link qdisc has let out so far (0 without one)."""
        m = re.search(r"Sent (\d+) bytes", self.tc("-s", "qdisc", "show", "dev", self.ns_if))
        return int(m.group(1)) if m else 0

    def counters(self) -> str:
        return self.nft(f"list table inet {PREFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete ``lbf-<pid>-<n>`` namespaces whose creating process is gone; return their names."""
    removed = []
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME_RE.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        for pid in run("ip", "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed
