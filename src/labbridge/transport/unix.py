"""Where Unix-domain sockets may live: private runtime directories only (issue 13).

A socket at a fixed name in a world-writable directory (``/tmp/hardware-extractionline``, as
the real Pychron relay does) can be squatted: another user creates it first and receives the
relay's requests, or answers them. labbridge puts a socket whose path is relative in a
private directory of its own and refuses any directory that another user could write to:

* ``$XDG_RUNTIME_DIR/labbridge`` when ``XDG_RUNTIME_DIR`` is set (per user, made by the
  login manager; shared by all of that user's nodes, so a relay split over two node files
  meets there);
* otherwise ``<state_dir>/run`` of the node.

Either is created with mode 0700. Before a socket is bound or connected to, its directory
must be owned by us and writable by nobody else (no group or world write bit); otherwise
:class:`UnsafeSocketDirectory` says which directory and why, and what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: The longest path ``sun_path`` holds on every platform we run on (Linux: 107 bytes).
MAX_SOCKET_PATH = 100


class UnsafeSocketDirectory(PermissionError):
    """A Unix socket's directory is not private to us."""


def runtime_dir(state_dir: Path) -> Path:
    """The private directory for relative socket paths (not created here)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "labbridge"
    return Path(state_dir) / "run"


def resolve_socket_path(path: str, state_dir: Path) -> str:
    """An absolute path stays as it is; a relative one goes into :func:`runtime_dir`."""
    if os.path.isabs(path):
        return path
    return str(runtime_dir(state_dir) / path)


def check_private_dir(directory: str | os.PathLike[str], *, create: bool = False) -> None:
    """Make sure ``directory`` is ours and writable only by us (creating it 0700 if asked).

    Raises :class:`UnsafeSocketDirectory` (a one-line reason naming the directory) or the
    ``OSError`` of a directory that cannot be made.
    """
    d = Path(directory)
    if create and not d.exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass  # made meanwhile (another node): checked below like any other
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSocketDirectory(
            f"socket directory {d} is a symbolic link; use a real directory of mode 0700")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketDirectory(f"socket directory {d} is not a directory")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeSocketDirectory(
            f"socket directory {d} belongs to uid {st.st_uid}, not to us (uid {uid}): "
            "another user could answer in our place; use a directory of our own, mode 0700")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSocketDirectory(
            f"socket directory {d} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"another user could put a socket there; chmod 700 {d} or use another directory")


def check_socket_dir(socket_path: str, *, create: bool = False) -> None:
    """:func:`check_private_dir` on the directory that holds ``socket_path``."""
    check_private_dir(os.path.dirname(os.path.abspath(socket_path)), create=create)
