"""The node's devices through real EPICS clients: pyepics 3.5.10 (libca) and p4p 4.3.0 (pvxs).

What EPICS clients expect is taken from EPICS itself, not from our encoder:

* a bo/bi record's enum strings are its ZNAM/ONAM fields, an ai's units/precision/alarm limits
  its EGU/PREC/HIGH/HIHI fields (EPICS base R7.0.8.1, modules/database/src/std/rec/*.dbd);
* a put to a channel without write access fails with ``ECA_NOWTACCESS`` ("Write access
  denied", base R7.0.8.1 modules/ca/src/client/caerr.h) over CA, and with "Put not permitted"
  over PVA (pvxs 1.5.2 ioc/iocsource.cpp, ``doFieldPreProcessing``);
* a CA put-callback reports no record-processing status (base R7.0.8.1
  modules/database/src/ioc/rsrv/camessage.c: only a failed dbPut maps to ECA_PUTFAIL), so a
  refusal found while processing shows as the record's alarm and LAST_ERROR; QSRV turns a
  processing status into the put's error text (pvxs 1.5.2 ioc/iocsource.cpp,
  ``doPostProcessing`` + ``DBErrorMessage``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from labbridge.devices.camera import SimCameraBackend
from labbridge.protocol.pychron.crc import append_crc16
from tests.epics.conftest import PREFIX, Lab

pytestmark = pytest.mark.interop
TIMEOUT = 10.0


class Monitor:
    """A camonitor: every value pyepics delivers, and an event per predicate."""

    def __init__(self, ca: Any, name: str) -> None:
        self.values: list[Any] = []
        self._cond = threading.Condition()
        self.pv = ca.PV(name, auto_monitor=True, callback=self._on_value)
        assert self.pv.wait_for_connection(TIMEOUT), f"{name} did not connect"
        # pyepics runs callbacks on changes only: the value at connection is read here.
        self._on_value(self.pv.get(timeout=TIMEOUT))

    def _on_value(self, value: Any = None, **_kw: Any) -> None:
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = TIMEOUT) -> Any:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(pred(v) for v in self.values), timeout)
        assert ok, f"{self.pv.pvname}: no value matching after {timeout} s: {self.values}"
        return next(v for v in self.values if pred(v))

    def close(self) -> None:
        self.pv.clear_callbacks()
        self.pv.disconnect()


def valve_states(lab: Lab) -> str:
    return lab.pychron("GetValveStates")


def test_ready_file_lists_ca_pva_ports_and_every_pv(epics_lab: Lab) -> None:
    e = epics_lab.epics
    assert e["prefix"] == PREFIX
    assert e["ca_port"] > 0 and e["pva_port"] > 0 and e["pva_udp_port"] > 0
    assert e["EPICS_CA_ADDR_LIST"] == f"127.0.0.1:{e['ca_port']}"
    pvs = set(e["pvs"])
    for v in "ABCD":
        assert {f"{PREFIX}:valves:{v}", f"{PREFIX}:valves:{v}_RBV",
                f"{PREFIX}:valves:{v}_LOCK", f"{PREFIX}:valves:{v}_OWNER"} <= pvs
    assert {f"{PREFIX}:gauges:IG", f"{PREFIX}:furnace:SETPOINT", f"{PREFIX}:argus:AX",
            f"{PREFIX}:camera:IMAGE", f"{PREFIX}:rotator:STATE"} <= pvs
    protocols = {(s["protocol"], s["port"]) for s in epics_lab.info["services"]
                 if s["service"] == "epics"}
    assert ("ca", e["ca_port"]) in protocols and ("pva", e["pva_port"]) in protocols
    assert all(s["host"] == "127.0.0.1" for s in epics_lab.info["services"])


def test_record_types_and_fields_seen_by_caget(epics_lab: Lab, ca: Any) -> None:
    valve = ca.PV(epics_lab.pv("valves:A"))
    assert valve.wait_for_connection(TIMEOUT)
    ctrl = valve.get_ctrlvars(timeout=TIMEOUT)
    assert valve.type.endswith("enum") and tuple(ctrl["enum_strs"]) == ("Closed", "Open")
    assert ca.caget(epics_lab.pv("valves:A_LOCK"), as_string=True, timeout=TIMEOUT) == "Unlocked"
    gauge = ca.PV(epics_lab.pv("gauges:IG"), form="ctrl")
    assert gauge.wait_for_connection(TIMEOUT)
    g = gauge.get_ctrlvars(timeout=TIMEOUT)
    assert gauge.type.endswith("double")
    assert g["units"] == "Torr" and g["precision"] == 3
    assert g["upper_warning_limit"] == pytest.approx(1e-6)
    assert g["upper_alarm_limit"] == pytest.approx(1e-5)
    assert 1e-9 < ca.caget(epics_lab.pv("gauges:IG"), timeout=TIMEOUT) < 1e-7
    state = ca.PV(epics_lab.pv("rotator:STATE"))
    assert state.wait_for_connection(TIMEOUT)
    assert "FAULT" in state.get_ctrlvars(timeout=TIMEOUT)["enum_strs"]
    assert ca.caget(epics_lab.pv("rotator:STATE"), as_string=True, timeout=TIMEOUT) == "STANDBY"
    sp = ca.PV(epics_lab.pv("furnace:TEMPERATURE"))
    assert sp.wait_for_connection(TIMEOUT)
    assert sp.get_ctrlvars(timeout=TIMEOUT)["units"] == "C"


def test_caput_opens_a_valve_through_the_device(epics_lab: Lab, ca: Any) -> None:
    rbv = Monitor(ca, epics_lab.pv("valves:A_RBV"))
    try:
        assert ca.caput(epics_lab.pv("valves:A"), 1, wait=True, timeout=TIMEOUT) == 1
        rbv.wait_for(lambda v: v == 1)
        assert valve_states(epics_lab).startswith("A1")  # the Pychron link sees it open
        assert ca.caput(epics_lab.pv("valves:A"), 0, wait=True, timeout=TIMEOUT) == 1
        rbv.wait_for(lambda v: v == 0)
        assert valve_states(epics_lab).startswith("A0")
    finally:
        rbv.close()


def test_camonitor_follows_a_change_made_by_another_link(epics_lab: Lab, ca: Any) -> None:
    mon = Monitor(ca, epics_lab.pv("valves:D"))
    try:
        mon.wait_for(lambda v: v == 0)
        assert epics_lab.pychron("Open D") == "OK"
        mon.wait_for(lambda v: v == 1)
        assert epics_lab.pychron("Close D") == "OK"
        mon.wait_for(lambda v: v == 0 and mon.values.count(1) >= 1)
    finally:
        mon.close()


def test_a_locked_valve_refuses_ca_and_pva_writes(epics_lab: Lab, ca: Any) -> None:
    lock = Monitor(ca, epics_lab.pv("valves:D_LOCK"))
    try:
        assert epics_lab.pychron("Lock D") == "OK"
        lock.wait_for(lambda v: v == 1)
        before = valve_states(epics_lab)
        with pytest.raises(ca.ca.CASeverityException, match="Write access denied"):
            ca.caput(epics_lab.pv("valves:D"), 1, wait=True, timeout=TIMEOUT)
        ctx = epics_lab.pva()
        try:
            with pytest.raises(Exception, match="Put not permitted"):
                ctx.put(epics_lab.pv("valves:D"), 1, timeout=TIMEOUT)
            assert int(ctx.get(epics_lab.pv("valves:D"), timeout=TIMEOUT).raw.value.index) == 0
        finally:
            ctx.close()
        assert ca.caget(epics_lab.pv("valves:D"), timeout=TIMEOUT) == 0
        assert valve_states(epics_lab) == before  # the device did not move
        assert "D0" in before
    finally:
        epics_lab.pychron("Unlock D")
        lock.wait_for(lambda v: v == 0 and 1 in lock.values)
        lock.close()


def test_an_interlock_refusal_keeps_the_value_and_says_why(epics_lab: Lab, ca: Any) -> None:
    assert epics_lab.pychron("Open C") == "OK"
    try:
        # CA: the put completes (CA carries no processing status), the value stays, the
        # record raises a WRITE/MAJOR alarm and LAST_ERROR holds the device's reason.
        ca.caput(epics_lab.pv("valves:B"), 1, wait=True, timeout=TIMEOUT)
        meta = ca.PV(epics_lab.pv("valves:B"), form="ctrl")
        assert meta.wait_for_connection(TIMEOUT)
        got = meta.get_with_metadata(form="ctrl", timeout=TIMEOUT)
        assert got["value"] == 0
        assert got["severity"] == 2 and got["status"] == 2  # MAJOR, WRITE
        reason = ca.caget(epics_lab.pv("valves:LAST_ERROR"), as_string=True, timeout=TIMEOUT)
        assert reason == "open B refused: interlock: C is open"
        assert append_crc16("A0,B0,C1,D0") == valve_states(epics_lab)
        # PVA: the same refusal is the put's error, with the reason.
        ctx = epics_lab.pva()
        try:
            with pytest.raises(Exception, match="interlock: C is open"):
                ctx.put(epics_lab.pv("valves:B"), 1, timeout=TIMEOUT)
        finally:
            ctx.close()
        assert ca.caget(epics_lab.pv("valves:B"), timeout=TIMEOUT) == 0
        assert "B0" in valve_states(epics_lab)
    finally:
        epics_lab.pychron("Close C")
    # Once allowed, the same write works and clears the alarm.
    assert ca.caput(epics_lab.pv("valves:B"), 1, wait=True, timeout=TIMEOUT) == 1
    got = ca.PV(epics_lab.pv("valves:B")).get_with_metadata(form="ctrl", timeout=TIMEOUT)
    assert got["value"] == 1 and got["severity"] == 0
    assert ca.caput(epics_lab.pv("valves:B"), 0, wait=True, timeout=TIMEOUT) == 1


def test_furnace_setpoint_goes_through_the_device_limits(epics_lab: Lab, ca: Any) -> None:
    sp = epics_lab.pv("furnace:SETPOINT")
    before = ca.caget(sp, timeout=TIMEOUT)
    ca.caput(sp, 5000.0, wait=True, timeout=TIMEOUT)
    assert ca.caget(sp, timeout=TIMEOUT) == before
    assert "outside" in ca.caget(epics_lab.pv("furnace:LAST_ERROR"), as_string=True,
                                 timeout=TIMEOUT)
    rbv = Monitor(ca, epics_lab.pv("furnace:SETPOINT_RBV"))
    try:
        assert ca.caput(sp, 250.0, wait=True, timeout=TIMEOUT) == 1
        rbv.wait_for(lambda v: v == pytest.approx(250.0))
    finally:
        rbv.close()


def test_spectrometer_intensities_update_per_integration(epics_lab: Lab, ca: Any) -> None:
    scans = Monitor(ca, epics_lab.pv("argus:SCANS"))
    try:
        first = scans.wait_for(lambda v: v is not None and v >= 1)
        scans.wait_for(lambda v: v >= first + 2)
    finally:
        scans.close()
    # magnet DAC 5.0 puts the Ar40 peak (5 V) on the axial cup
    assert ca.caget(epics_lab.pv("argus:AX"), timeout=TIMEOUT) == pytest.approx(5.0, rel=0.05)


def test_pva_ntndarray_is_the_cameras_frame(epics_lab: Lab, ca: Any) -> None:
    frames = Monitor(ca, epics_lab.pv("camera:FRAMES"))
    try:
        n0 = frames.wait_for(lambda v: v is not None)
        assert ca.caput(epics_lab.pv("camera:ACQUIRE"), 1, wait=True, timeout=TIMEOUT) == 1
        n = frames.wait_for(lambda v: v >= n0 + 1)
    finally:
        frames.close()
    ctx = epics_lab.pva()
    try:
        img = ctx.get(epics_lab.pv("camera:IMAGE"), timeout=TIMEOUT)
    finally:
        ctx.close()
    # The same simulated camera, replayed to frame n, gives the expected pixels.
    backend = SimCameraBackend(64, 48, seed=3)

    async def replay() -> np.ndarray:
        frame = None
        for _ in range(n):
            frame = await backend.snap()
        assert frame is not None
        return frame

    expected = asyncio.run(replay())
    assert img.shape == (48, 64) and img.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(img), expected)
    assert ca.caget(epics_lab.pv("camera:ACQUIRE"), timeout=TIMEOUT) == 0
