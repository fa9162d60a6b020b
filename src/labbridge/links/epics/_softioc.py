"""The few pieces of pythonSoftIOC and EPICS base the IOC needs, in one place.

Imported only when an IOC starts (``import softioc`` loads EPICS base). What is used beyond
softioc's documented builder API, and why (ADR 0151):

* Output records use labbridge's own device-support type (DTYP ``Labbridge``, a subclass of
  softioc's bo/ao support) so a refused write can end record processing with a status of its
  own: the record gets a WRITE/MAJOR alarm, and the status is an EPICS error code whose text
  (registered with libCom's ``errSymbolAdd``) is the refusal reason, which QSRV sends to a
  pvAccess client as the put's error message.
* ``asSetFilename`` (dbCore) loads the access-security file before ``iocInit``;
  ``asCheckClientIP`` (libCom) makes EPICS judge and report a CA client by its socket's
  address, not by the host name the client claims; ``asActive`` (libCom) tells whether the
  file was loaded; ``asTrapWriteRegisterListener`` (libCom) tells the face which client
  writes (ADR 0154).
"""

from __future__ import annotations

import asyncio
import ctypes
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import epicsdbbuilder
from epicscorelibs.ioc import Com, dbCore
from softioc import asyncio_dispatcher, builder, device, pythonSoftIoc, softioc

#: Module number of labbridge's EPICS status codes (>= 501, unused by EPICS base).
ERR_MODULE = 0xF1AB
#: Size of one refusal text buffer (bytes, NUL included).
MESSAGE_SIZE = 256

_codes: dict[str, int] = {}
_buffers: list[Any] = []  # errSymbolAdd keeps the pointer: the buffers live for the process
_loaded: list[bool] = []
_lock = threading.Lock()


def _refusing(base: type[Any], record: str) -> type[Any]:
    """softioc's output device support for ``record``, returning a status of our own when
    ``validate`` refused the value (softioc has already put the old value back)."""

    def _process(self: Any, rec: Any) -> int:
        rc = base._process(self, rec)
        if rc == device.EPICS_ERROR:
            rec.NSEV = 2  # MAJOR: like recGblSetSevr(prec, WRITE_ALARM, MAJOR_ALARM)
            rec.NSTA = 2  # WRITE
            return int(_codes.get(self._name, rc))
        return int(rc)

    return type(f"labbridge_{record}", (base,),
                {"_device_name_": f"devLabbridge_{record}", "_process": _process})


def ensure_loaded() -> None:
    """Register the ``Labbridge`` device support with the builder and with EPICS (once)."""
    with _lock:
        if _loaded:
            return
        global _BO, _AO
        _BO = _refusing(device.bo, "bo")
        _AO = _refusing(device.ao, "ao")
        # Both loaders read the file at once: it goes with its folder right after.
        with tempfile.TemporaryDirectory(prefix="labbridge-dbd-") as folder:
            dbd = Path(folder) / "labbridge.dbd"
            dbd.write_text('device(bo, INST_IO, devLabbridge_bo, "Labbridge")\n'
                           'device(ao, INST_IO, devLabbridge_ao, "Labbridge")\n')
            epicsdbbuilder.LoadDbdFile(str(dbd))
            softioc.dbLoadDatabase(dbd.name, folder, None)
        Com.errSymbolAdd.argtypes = [ctypes.c_long, ctypes.c_void_p]
        Com.errSymbolAdd.restype = ctypes.c_int
        _loaded.append(True)


_BO: Any = None
_AO: Any = None


def set_prefix(prefix: str) -> None:
    builder.SetDeviceName(prefix)


def load_database() -> None:
    builder.LoadDatabase()


def register_refusal() -> tuple[int, Any]:
    """A new status code and the text buffer its message is read from."""
    buf = ctypes.create_string_buffer(MESSAGE_SIZE)
    buf.value = b"write refused"
    code = (ERR_MODULE << 16) | (len(_buffers) + 1)
    status = Com.errSymbolAdd(code, ctypes.addressof(buf))
    if status != 0:
        raise RuntimeError(f"errSymbolAdd({code:#x}) failed with status {status}")
    _buffers.append(buf)
    return code, buf


def make_out(rtype: str, suffix: str, fields: dict[str, Any], initial: Any,
             validate: Callable[[Any, Any], bool], code: int) -> Any:
    support = {"bo": (epicsdbbuilder.records.bo, _BO),
               "ao": (epicsdbbuilder.records.ao, _AO)}.get(rtype)
    if support is None:
        raise ValueError(f"no writable {rtype} records")
    make = pythonSoftIoc.PythonDevice.makeRecord(support[0], support[1], "Labbridge")
    value = int(initial or 0) if rtype == "bo" else float(initial if initial is not None
                                                          else 0.0)
    rec = make(suffix, OMSL="supervisory", validate=validate, always_update=True,
               initial_value=value, **fields)
    _codes[str(rec)] = code
    return rec


def make_in(rtype: str, suffix: str, fields: dict[str, Any], initial: Any) -> Any:
    f = dict(fields)
    if rtype == "ai":
        return builder.aIn(suffix, initial_value=_float(initial), **f)
    if rtype == "bi":
        return builder.boolIn(suffix, initial_value=int(initial or 0), **f)
    if rtype == "mbbi":
        return builder.mbbIn(suffix, initial_value=int(initial or 0), **f)
    if rtype == "longin":
        return builder.longIn(suffix, initial_value=int(initial or 0), **f)
    if rtype == "stringin":
        return builder.stringIn(suffix, initial_value=str(initial or "")[:39], **f)
    if rtype == "long_stringin":
        return builder.longStringIn(suffix, initial_value=str(initial or ""), length=256, **f)
    raise ValueError(f"unknown record type {rtype!r}")


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def set_access_file(path: Path) -> None:
    dbCore.asSetFilename.argtypes = [ctypes.c_char_p]
    dbCore.asSetFilename(str(path).encode())


class _TrapMessage(ctypes.Structure):
    _fields_ = [("userid", ctypes.c_char_p), ("hostid", ctypes.c_char_p),
                ("serverSpecific", ctypes.c_void_p), ("userPvt", ctypes.c_void_p),
                ("dbrType", ctypes.c_int), ("no_elements", ctypes.c_int),
                ("data", ctypes.c_void_p)]


_Listener = ctypes.CFUNCTYPE(None, ctypes.POINTER(_TrapMessage), ctypes.c_int)


def trap_writes(peers: dict[int, str]) -> Any:
    """Remember, per server thread, which client host is writing while a put runs.

    The host is the client's socket address: RSRV sets it from the socket when
    ``asCheckClientIP`` is on (and then ignores the client's HOST_NAME message), QSRV always
    does (pvxs ``ioc/credentials.cpp``). The user name is what the client claims and is not
    used. The entry is dropped when the put ends (``after``): a thread that processes a
    record with no put of its own under way finds no client and the write is refused.

    Keyed by OS thread id, not a ``threading.local``: EPICS's server threads are not Python
    threads, and each ctypes callback in such a thread gets a fresh Python thread state.
    """

    def listener(msg: Any, after: int) -> None:
        ident = threading.get_ident()
        if after:
            peers.pop(ident, None)
            return
        peers[ident] = (msg.contents.hostid or b"").decode("ascii", "replace")

    cb = _Listener(listener)
    Com.asTrapWriteRegisterListener.argtypes = [_Listener]
    Com.asTrapWriteRegisterListener.restype = ctypes.c_void_p
    Com.asTrapWriteRegisterListener(cb)
    return cb  # the caller keeps it alive


def check_client_ip() -> None:
    """Judge CA clients by their socket address (EPICS base ``asCheckClientIP = 1``): host
    access groups are resolved to addresses when the file loads, and a client's HOST_NAME
    claim is ignored. Must be set before ``iocInit`` loads the access file."""
    flag = ctypes.c_int.in_dll(Com, "asCheckClientIP")
    flag.value = 1
    if flag.value != 1:
        raise RuntimeError("cannot set EPICS asCheckClientIP")


def access_security_active() -> bool:
    """Whether the access file loaded (EPICS grants everything when it did not)."""
    return bool(ctypes.c_int.in_dll(Com, "asActive").value)


def ioc_init(loop: asyncio.AbstractEventLoop) -> None:
    """Start the IOC (CA and PVA servers); ``loop`` runs softioc's dispatched callbacks."""
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(loop=loop))
