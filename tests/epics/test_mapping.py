"""The EPICS face's knowledge of devices, without an IOC: names, record types, values and the
device methods a write calls (the same ones every other link calls)."""

from __future__ import annotations

import math

import pytest

from labbridge.devices.backends.sim import SimGaugeBackend, SimValveBackend
from labbridge.devices.base import Change, Device
from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.furnace import Furnace, WatchdogConfig
from labbridge.devices.gauges import GaugeController
from labbridge.devices.spectrometer import Spectrometer
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.epics.mapping import (
    CameraBinding,
    FurnaceBinding,
    GaugeBinding,
    SpectrometerBinding,
    ValveBinding,
    binding_for,
    check_names,
)


def bank() -> ValveBank:
    return ValveBank("valves", [ValveConfig("A", "0", description="inlet"),
                                ValveConfig("B c", "1", interlocks=("A",)),
                                ValveConfig("L", "2", initially_locked=True)],
                     SimValveBackend())


def test_valve_records_types_and_lock_link() -> None:
    b = ValveBinding(bank())
    specs = {r.suffix: r for r in b.records()}
    assert specs["valves:A"].rtype == "bo" and specs["valves:A"].writable
    assert specs["valves:A"].fields["ZNAM"] == "Closed" and specs["valves:A"].fields["ONAM"] \
        == "Open"
    assert specs["valves:A"].lock == "valves:A_LOCK"
    assert specs["valves:A_RBV"].rtype == "bi" and not specs["valves:A_RBV"].writable
    assert specs["valves:A_LOCK"].fields["ONAM"] == "Locked"
    assert specs["valves:A_OWNER"].rtype == "stringin"
    assert "valves:B_c" in specs  # a space is not allowed in a record name
    assert specs["valves:LAST_ERROR"].rtype == "long_stringin"
    assert b.state()["valves:L_LOCK"] == 1


async def test_valve_writes_call_the_bank_and_report_its_refusals() -> None:
    v = bank()
    b = ValveBinding(v)
    assert await b.write("valves:A", 1, "me@host") is None
    assert v.is_open("A")
    assert await b.write("valves:B_c", 1, None) == "open B c refused: interlock: A is open"
    assert not v.is_open("B c")
    assert await b.write("valves:L", 1, None) == "open L refused: software locked"
    assert not v.is_open("L")
    assert await b.write("valves:A_RBV", 1, None) == "valves:A_RBV is read-only"
    ups = b.updates(Change("valves", "A", {"state": 1, "locked": 0, "owner": "x"}))
    assert ups == {"valves:A": 1, "valves:A_RBV": 1, "valves:A_LOCK": 0, "valves:A_OWNER": "x"}


def test_gauge_records_have_units_precision_and_alarm_limits() -> None:
    g = GaugeController("gauges", ["IG", "CG1"], SimGaugeBackend({"IG": "ion"}))
    b = GaugeBinding(g, {"CG1": (2.0, 20.0)})
    specs = {r.suffix: r for r in b.records()}
    assert specs["gauges:IG"].rtype == "ai"
    assert specs["gauges:IG"].fields["EGU"] == "Torr" and specs["gauges:IG"].fields["PREC"] == 3
    assert (specs["gauges:IG"].fields["HIGH"], specs["gauges:IG"].fields["HIHI"]) == (1e-6, 1e-5)
    assert (specs["gauges:CG1"].fields["HIGH"], specs["gauges:CG1"].fields["HIHI"]) == (2, 20)
    assert math.isnan(b.state()["gauges:IG"])  # never read: UDF
    assert b.updates(Change("gauges", "IG", 2e-8)) == {"gauges:IG": 2e-8}


async def test_furnace_setpoint_write_uses_the_device_limits_and_rearms_the_watchdog() -> None:
    f = Furnace("furnace", watchdog=WatchdogConfig(timeout=1.0, safe_setpoint=0.0))
    b = FurnaceBinding(f)
    reason = await b.write("furnace:SETPOINT", 5000.0, None)
    assert reason is not None and "outside" in reason and f.setpoint != 5000.0
    assert await b.write("furnace:SETPOINT", 300.0, None) is None
    assert f.setpoint == 300.0 and f._last_heard is not None  # heard() like every command set
    assert b.state()["furnace:SETPOINT_RBV"] == 300.0


async def test_camera_acquire_grabs_a_frame_and_the_image_follows() -> None:
    cam = Camera("camera", SimCameraBackend(8, 6, seed=1))
    b = CameraBinding(cam)
    assert b.state()["camera:IMAGE"] is None
    assert await b.write("camera:ACQUIRE", 1, None) is None
    assert cam.frames == 1 and cam.last_frame is not None
    ups = b.updates(Change("camera", "frames", 1))
    assert ups["camera:FRAMES"] == 1 and ups["camera:IMAGE"] is cam.last_frame


def test_spectrometer_is_read_when_its_integration_completes() -> None:
    now = [100.0]
    s = Spectrometer("argus", clock=lambda: now[0], integration_time=0.5, seed=1)
    b = SpectrometerBinding(s)
    assert b.next_sample_in() == pytest.approx(0.5)
    seen: list[Change] = []
    s.subscribe(seen.append)
    now[0] += 0.5
    b.sample()
    assert [c.signal for c in seen] == ["scan"]
    assert set(b.updates(seen[0])) == {f"argus:{d}" for d in s.detectors} | {"argus:SCANS"}


def test_unknown_devices_are_skipped_and_names_are_checked() -> None:
    assert binding_for(Device("thing")) is None
    specs = ValveBinding(bank()).records()
    check_names("LAB", specs)
    with pytest.raises(ValueError, match="prefix"):
        check_names("LAB PREFIX", specs)
    with pytest.raises(ValueError, match="longer than 60"):
        check_names("X" * 50, specs)
    with pytest.raises(ValueError, match="two records"):
        check_names("LAB", specs + specs[:1])
