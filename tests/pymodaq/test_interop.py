"""Interop with the real G3 implementation (pymodaq_utils 5.3.7, pymodaq_data 5.3.0,
serializall 0.0.1; spec pymodaq.md §10): their encoder vs ours, their client vs our server, our
client vs a server built from their classes, auto-detection next to a G1 peer, EOF."""

from __future__ import annotations

import asyncio

import numpy as np
import pymodaq_data  # noqa: F401  (the dev extra: missing means failing, not skipping)
import pymodaq_utils  # noqa: F401  (the dev extra: missing means failing, not skipping)
import pytest
import serializall  # noqa: F401  (the dev extra: missing means failing, not skipping)

from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient
from labbridge.protocol.pymodaq.g1 import encode_string, scalar_chunks
from labbridge.protocol.pymodaq.g3 import decode_object, encode_message
from labbridge.protocol.pymodaq.messages import Generation
from labbridge.protocol.pymodaq.objects import (
    Axis,
    DataWithAxes,
    data_actuator,
    data_from_plugins,
    data_to_export,
)
from tests.pymodaq import pmd_peer as pmd
from tests.pymodaq import real_settings_xml as real
from tests.pymodaq.conftest import RecordingCamera, crc, fast_backoff

pytestmark = pytest.mark.interop
TS = 1700000000.0


def theirs(obj) -> bytes:
    return pmd.FACTORY.get_apply_serializer(obj, append_length=True)


def _stamp(obj):
    obj.timestamp = TS
    for d in getattr(obj, "data", []) if type(obj).__name__ == "DataToExport" else []:
        d.timestamp = TS
    return obj


def _pairs():
    frame = pmd.frame_480x640()
    yield "str", "move_abs", "move_abs"
    yield "int", 7, 7
    yield "float", 12.5, 12.5
    yield "bool", True, True
    yield "complex", 1 + 2j, 1 + 2j
    yield "bytes", b"\x00\x01", b"\x00\x01"
    yield "None", None, None
    yield "list", [1.0, "a", [2]], [1.0, "a", [2]]
    yield "dict", {"a": 1, "b": "x"}, {"a": 1, "b": "x"}
    a = np.arange(6, dtype=">f8").reshape(2, 3)
    yield "ndarray>f8", a, a
    f = np.asfortranarray(np.arange(6, dtype="<u2").reshape(2, 3))
    yield "ndarray_fortran", f, f
    yield ("DataActuator", _stamp(pmd.DataActuator("pos", data=[np.array([12.5])], units="mm")),
           data_actuator(12.5, units="mm", name="pos", timestamp=TS))
    ax = np.array([0.0, 1.0, 2.0])
    yield ("DataRaw_with_Axis",
           _stamp(pmd.DataRaw("spec", data=[np.arange(3.0)], units="V",
                              axes=[pmd.Axis("x", units="um", data=ax, index=0)])),
           DataWithAxes(cls_name="DataRaw", name="spec", data=(np.arange(3.0),), timestamp=TS,
                        dim="Data1D", units="V", labels=("CH00",),
                        axes=(Axis("x", "um", ax, 0),)))
    yield ("DTE_480x640", _stamp(pmd.dte_of(frame)),
           data_to_export("viewer", [data_from_plugins("cam", [frame], timestamp=TS)],
                          timestamp=TS))


PAIRS = list(_pairs())


@pytest.mark.parametrize("name,their_obj,our_obj", PAIRS, ids=[p[0] for p in PAIRS])
def test_byte_equality_and_cross_decoding(name, their_obj, our_obj):
    their_bytes = theirs(their_obj)
    assert encode_message(our_obj) == their_bytes
    # we decode theirs and re-encode to the same bytes
    assert encode_message(decode_object(their_bytes[4:])) == their_bytes
    # they decode ours
    back = pmd.FACTORY.get_apply_deserializer(encode_message(our_obj)[4:])
    assert theirs(back) == their_bytes


async def test_their_grabber_client_against_our_server(server):
    frame = pmd.frame_480x640()
    log: list = []
    peer = asyncio.ensure_future(asyncio.to_thread(pmd.grabber_client, server.port, frame, log))
    try:
        await server.detector.wait_connected(10)
        assert server.detector.generation is Generation.G3
        got = (await server.detector.grab("2D"))[0]
        assert got.shape == (480, 640) and got.dtype == np.uint16
        assert crc(got) == pmd.crc(frame)  # checksum on their side vs ours
        dte = server.detector.dte
        assert dte is not None and dte.data[0].cls_name == "DataFromPlugins"
        # their Infos (real writer's format, bytes) populate our settings, typed
        assert server.detector.settings == {"exposure_ms": 10.0, "units": "counts",
                                            "show": True, "comment": "", "name": 'a<b & "c"'}
        server.detector.set_setting("exposure_ms", 3)
        got2 = (await server.detector.grab("2D"))[0]  # commands stay in order after set_info
        assert crc(got2) == pmd.crc(frame)
    finally:
        server.detector.disconnect()
        await asyncio.wait_for(peer, 15)
    assert log[0] == "Send Data 2D" and log[1] == "set_info" and log[3] == "Send Data 2D"
    set_info = [e for e in log if isinstance(e, tuple)]
    # what a real server sends: the client's title and flags, show_pb, value in the text
    assert set_info == [("set_info", ["exposure_ms"],
                         b'<exposure_ms type="float" title="Exposure (ms):" visible="1" '
                         b'removable="0" readonly="0" show_pb="0">3.0</exposure_ms>')]
    # and their client's settings leave with it (issue 14 item 3)
    await asyncio.wait_for(_until(server.detector, lambda: not server.detector.connected), 10)
    assert server.detector.settings == {} and server.detector.settings_xml is None


async def test_their_actuator_client_against_our_server(server):
    log: list = []
    peer = asyncio.ensure_future(asyncio.to_thread(pmd.actuator_client, server.port, log))
    try:
        await server.actuator.wait_connected(10)
        await asyncio.wait_for(_settings(server.actuator), 5)
        # a real DAQ_Move's Infos: units for move_abs, the nested groups by path
        assert server.actuator.units == "mm"
        assert server.actuator.settings["timeout"] == 20
        assert server.actuator.settings["bounds/max_bound"] == 1.0
        # its Info_xml after a change (real path and XML) update them
        await asyncio.wait_for(_until(server.actuator, lambda: server.actuator.settings[
            "bounds/is_bounds"] is True and server.actuator.settings["epsilon"] == 0.05), 10)
        assert await server.actuator.move_abs(12.5) == 12.5
        assert await server.actuator.get_position() == 12.5
        assert await server.actuator.move_rel(1.5) == 14.0
        assert await server.actuator.move_home() == 0.0
    finally:
        server.actuator.disconnect()
        await asyncio.wait_for(peer, 15)
    assert log[0] == "move_abs" and log[1] == ("DataActuator", 12.5, "mm")
    assert "get_actuator_value" in log  # the G3 position query, not check_position


async def _until(dev, cond):
    changed = asyncio.Event()
    unsub = dev.subscribe(lambda ch: changed.set())
    try:
        while not cond():
            changed.clear()
            await changed.wait()
    finally:
        unsub()


async def _settings(dev):
    changed = asyncio.Event()
    unsub = dev.subscribe(lambda ch: changed.set() if ch.signal == "settings" else None)
    try:
        if not dev.settings:
            await changed.wait()
    finally:
        unsub()


@pytest.mark.parametrize("scenario", ["actuator", "grabber"])
async def test_our_client_against_their_server(scenario):
    srv = pmd.listen()
    port = srv.getsockname()[1]
    session = asyncio.ensure_future(asyncio.to_thread(pmd.server_session, srv, scenario))
    stage = Stage("stage", SimStageBackend(), units="mm")
    cam = RecordingCamera()
    dev = stage if scenario == "actuator" else cam
    changed = asyncio.Event()
    dev.subscribe(lambda ch: changed.set() if ch.signal in ("exposure_ms", "home") else None)
    client = PyMoDAQClient(dev, "127.0.0.1", port, generation=Generation.G3,
                           backoff=fast_backoff())
    await client.start()
    try:
        await client.wait_connected(10)
        # set_info is the last command their server sends: wait until the device applied it
        await asyncio.wait_for(changed.wait(), 10)
        if scenario == "grabber":
            await _wait_frames(cam, 1)
    finally:
        await client.stop()  # sends Quit
        out = await asyncio.wait_for(session, 15)
        srv.close()
    assert out["last"] == "Quit"
    # Infos in the real format, read back by the real reader's rules (value = element text)
    want = real.WRITER_STAGE if scenario == "actuator" else real.WRITER_CAMERA
    assert out["infos"] == want
    # set_info applied, then reported back as Info_xml, as the real client does (send_info:
    # full child path starting with the module's settings group)
    if scenario == "actuator":
        assert out["info_xml"] == [(["move_settings", "home"], real.WRITER_PARAM_HOME)]
    else:
        assert out["info_xml"] == [(["detector_settings", "exposure_ms"],
                                    real.WRITER_PARAM_EXPOSURE)]
    if scenario == "actuator":
        assert stage.home == 1.5
        assert out["type"] == "ACTUATOR"
        assert out["reply1"] == "move_done" and out["moved"] == ("DataActuator", 12.5, "mm")
        assert out["reply2"] == "position_is" and out["position"] == ("DataActuator", 12.5, "mm")
        assert stage.position == 12.5
    else:
        assert out["type"] == "GRABBER"
        assert cam.exposure_ms == 42.0  # set_info applied
        assert out["reply1"] == "Done"
        name, inner, shape, dtype, their_crc = out["dte"]
        assert (name, inner, shape, dtype) == ("DataToExport", "DataFromPlugins", (480, 640),
                                               "uint16")
        assert their_crc == crc(cam.sent[-1])


async def test_our_client_answers_position_queries_during_a_move_to_their_server():
    """Issue 14 item 2. A real remote DAQ_Move starts a move without blocking (its hardware
    thread's poll timer runs it: PyMoDAQ@5.0.0 src/pymodaq/control_modules/daq_move.py
    DAQ_Move_Hardware.move_abs -> poll_moving), answers get_actuator_value from its queue at
    once with the current value (queue_command 'get_actuator_value' -> thread_status ->
    ThreadCommand('position_is') to the TCP client because _send_to_tcpip is set by the
    move), forwards the values its poll reads meanwhile (move_utility_classes.py
    check_target_reached -> emit_value), and ends with move_done. Their server drives our
    client through that sequence."""
    srv = pmd.listen()
    port = srv.getsockname()[1]
    session = asyncio.ensure_future(asyncio.to_thread(pmd.server_session, srv, "moving"))
    stage = Stage("stage", SimStageBackend(speed=5.0), units="mm")
    client = PyMoDAQClient(stage, "127.0.0.1", port, generation=Generation.G3,
                           backoff=fast_backoff())
    await client.start()
    try:
        out = await asyncio.wait_for(asyncio.shield(session), 20)
    finally:
        await client.stop()
        srv.close()
    seen = out["seen"]
    # the query was answered while the axis moved: position_is values short of the target,
    # the only move_done last, where stop_motion left the axis
    assert seen[0][0] == "position_is" and 0.0 <= seen[0][1] < 1000.0
    assert [c for c, _ in seen[:-1]] == ["position_is"] * (len(seen) - 1)
    assert seen[-1][0] == "move_done" and seen[-1][1] < 1000.0
    assert seen[-1][1] == stage.position


async def _wait_frames(cam, n):
    done = asyncio.Event()
    unsub = cam.subscribe(lambda ch: done.set() if ch.signal == "frames" and ch.value >= n
                          else None)
    try:
        if cam.frames < n:
            await asyncio.wait_for(done.wait(), 10)
    finally:
        unsub()


async def test_auto_detection_g3_and_g1_on_one_port(server):
    frame = pmd.frame_480x640(3)
    log: list = []
    peer = asyncio.ensure_future(asyncio.to_thread(pmd.grabber_client, server.port, frame, log))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # a raw G1 actuator script (seed bytes) on the same port
        writer.write(encode_string("ACTUATOR") + encode_string("Infos")
                     + encode_string("<settings><units value='um'/></settings>"))
        await server.actuator.wait_connected(10)
        await server.detector.wait_connected(10)
        assert server.actuator.generation is Generation.G1
        assert server.detector.generation is Generation.G3
        pos = asyncio.ensure_future(server.actuator.get_position())
        assert await reader.readexactly(18) == encode_string("check_position")
        writer.write(encode_string("position_is") + b"".join(scalar_chunks(3.5)))
        assert await pos == 3.5
        assert crc((await server.detector.grab())[0]) == pmd.crc(frame)
    finally:
        writer.close()
        server.detector.disconnect()
        await asyncio.wait_for(peer, 15)


async def test_their_peer_closing_mid_message(server, caplog):
    message = theirs(pmd.dte_of(pmd.frame_480x640()))
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(theirs("GRABBER") + theirs("Done") + message[: len(message) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(server.wait_closed_connections(1), 10)
    assert server.close_reasons[-1].startswith("truncated")
