"""Run a command in a private network namespace with its own loopback.

Some commands must run exactly as a user types them, fixed ports included (the README's
``labbridge serve examples/valve-controller.yaml`` binds 1061). In a private network namespace
such a port cannot clash with anything else on the machine (other tests, other jobs), so the
rule "tests never bind fixed ports on the shared loopback" still holds.

``private_network(argv)`` returns the argv that runs ``argv`` in a fresh namespace: ``unshare
--net --mount`` (plus ``--map-root-user`` when not root, which needs unprivileged user
namespaces), then this file as a script, which brings ``lo`` up (and mounts a private /tmp when
asked) and execs the command.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class NoPrivateNetwork(RuntimeError):
    """This machine cannot create a private network namespace."""


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


_MS_BIND = 0x1000
_MS_REC = 0x4000


def _kept_in_tmp() -> list[str]:
    """The entries of /tmp that this test run itself lives in (a clone or a virtualenv under
    /tmp: the interpreter, the checkout, the working directory); a private /tmp keeps them."""
    names = set()
    for p in (sys.executable, os.path.realpath(sys.executable), sys.prefix, os.getcwd(),
              str(Path(__file__).resolve()), *sys.path):
        parts = Path(p).parts if p else ()
        if len(parts) > 2 and parts[:2] == ("/", "tmp"):
            names.add(parts[2])
    return sorted(names)


def _private_tmp(keep: list[str]) -> None:
    """A fresh tmpfs on /tmp, seen only by this mount namespace and its children, with the
    entries ``keep`` of the old /tmp bound into it (the run's own interpreter and checkout)."""
    libc = ctypes.CDLL(None, use_errno=True)
    old = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"mode=1777") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount a private /tmp: {os.strerror(err)}")
    for name in keep:
        src = f"/proc/self/fd/{old}/{name}"
        dst = f"/tmp/{name}"
        if os.path.isdir(src):
            os.mkdir(dst)
        else:
            open(dst, "x").close()
        if libc.mount(src.encode(), dst.encode(), None, _MS_BIND | _MS_REC, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot keep /tmp/{name} in the private /tmp: "
                               f"{os.strerror(err)}")
    os.close(old)


def _unshare() -> list[str]:
    exe = shutil.which("unshare")
    if exe is None:
        raise NoPrivateNetwork("the 'unshare' command (util-linux) is not installed")
    flags = ["--net", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    return [exe, *flags]


@functools.cache
def check_private_network() -> None:
    """Raise :class:`NoPrivateNetwork` with the reason when namespaces are unavailable."""
    probe = subprocess.run(
        [*_unshare(), sys.executable, __file__, *_tmp_args(), "--", sys.executable, "-c",
         "import os, socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 1061)); s.listen(); "
         "assert sorted(os.listdir('/tmp')) == sys.argv[1:], os.listdir('/tmp')",
         *_kept_in_tmp()],
        capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise NoPrivateNetwork("cannot create a private network namespace with its own "
                               "loopback and /tmp (unshare --net --mount): "
                               f"{probe.stderr.strip()[-300:]}; run the suite as root or "
                               "enable unprivileged user namespaces")


def _tmp_args() -> list[str]:
    return ["--private-tmp", *(f"--keep={name}" for name in _kept_in_tmp())]


def private_network(argv: list[str], *, private_tmp: bool = False) -> list[str]:
    """``argv`` wrapped to run in a fresh network namespace whose loopback is up (and, with
    ``private_tmp``, with an empty /tmp of its own: files a command leaves in /tmp cannot
    meet another run's)."""
    check_private_network()
    return [*_unshare(), sys.executable, str(Path(__file__).resolve()),
            *(_tmp_args() if private_tmp else []), "--", *argv]


if __name__ == "__main__":
    args = sys.argv[1:]
    tmp = args[:1] == ["--private-tmp"]
    if tmp:
        args = args[1:]
    keep = []
    while args and args[0].startswith("--keep="):
        keep.append(args.pop(0).removeprefix("--keep="))
    if args[:1] == ["--"]:
        args = args[1:]
    _loopback_up()
    if tmp:
        _private_tmp(keep)
        os.environ["TMPDIR"] = "/tmp"
    os.execvp(args[0], args)
