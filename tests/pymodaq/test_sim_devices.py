"""Simulated devices of the PyMoDAQ family: camera spot moves, stage motion and limits,
spectrometer trace and axis."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.spectrum import SimSpectrumBackend, Spectrometer
from labbridge.devices.stage import SimStageBackend, Stage


async def test_camera_spot_moves_between_frames():
    cam = Camera("cam", SimCameraBackend(160, 120, noise=0.0, sigma=5.0))
    f1, f2 = (await cam.grab())[0], (await cam.grab())[0]
    assert f1.shape == (120, 160) and f1.dtype == np.uint16
    p1 = np.unravel_index(np.argmax(f1), f1.shape)
    p2 = np.unravel_index(np.argmax(f2), f2.shape)
    assert p1 != p2
    cx, cy = cam.backend.spot_center(0)
    assert abs(p1[1] - cx) <= 1 and abs(p1[0] - cy) <= 1
    assert cam.frames == 2


async def test_camera_noise_and_dtype():
    noisy = (await Camera("c", SimCameraBackend(64, 48, noise=20.0, dtype="uint8",
                                                amplitude=100, offset=50)).grab())[0]
    assert noisy.dtype == np.uint8 and noisy.std() > 5
    with pytest.raises(ValueError):
        SimCameraBackend(0, 10)


async def test_camera_settings():
    cam = Camera("c", SimCameraBackend(8, 8))
    cam.set_setting("exposure_ms", "12.5")
    assert cam.settings()["exposure_ms"] == 12.5
    with pytest.raises(KeyError):
        cam.set_setting("gain", "1")


async def test_stage_moves_and_limits():
    st = Stage("s", SimStageBackend(), minimum=-5, maximum=5)
    seen = []
    st.subscribe(lambda ch: seen.append((ch.signal, ch.value)))
    assert await st.move_abs(2.0) == 2.0
    assert await st.move_rel(1.5) == 3.5
    assert await st.move_home() == 0.0
    with pytest.raises(ValueError):
        await st.move_abs(6.0)
    assert ("position", 3.5) in seen and ("moving", True) in seen


async def test_stage_stop_during_a_move():
    st = Stage("s", SimStageBackend(speed=10.0))
    moving = asyncio.Event()
    st.subscribe(lambda ch: moving.set() if ch.signal == "moving" and ch.value else None)
    move = asyncio.ensure_future(st.move_abs(100.0))
    await moving.wait()
    await st.stop_motion()
    final = await move
    assert 0 <= final < 100.0 and st.position == final


async def test_spectrometer_trace_and_axis():
    sp = Spectrometer("sp", SimSpectrumBackend(pixels=500, noise=0.0))
    trace = (await sp.grab())[0]
    wl, label, units = sp.axes()["x"]
    assert trace.shape == wl.shape == (500,) and (label, units) == ("wavelength", "nm")
    assert abs(wl[np.argmax(trace)] - 532.0) < 2.0
