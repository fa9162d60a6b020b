"""Our client against our server over loopback, every generation: handshake, moves, position,
frames, set_info, stop, reconnect, replacement, timeouts (spec pymodaq.md §4, §6, §7)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from labbridge.devices.spectrum import SimSpectrumBackend, Spectrometer
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient, PyMoDAQServer, RemoteUnavailable
from labbridge.protocol.pymodaq.g3 import encode_message
from labbridge.protocol.pymodaq.messages import Dialect, Generation
from labbridge.protocol.pymodaq.settings_xml import parameter_to_xml
from tests.pymodaq.conftest import RecordingCamera, crc, fast_backoff

MODES = [(Generation.G3, Dialect.G1A), (Generation.G1, Dialect.G1A),
         (Generation.G1, Dialect.G1B)]
IDS = ["g3", "g1a", "g1b"]


@contextlib.asynccontextmanager
async def running(*clients: PyMoDAQClient):
    for c in clients:
        await c.start()
    try:
        yield clients
    finally:
        for c in clients:
            await c.stop()


def client(dev, srv: PyMoDAQServer, gen: Generation, dialect: Dialect) -> PyMoDAQClient:
    assert srv.port is not None
    return PyMoDAQClient(dev, "127.0.0.1", srv.port, generation=gen, dialect=dialect,
                         backoff=fast_backoff())


@pytest.mark.parametrize("gen,dialect", MODES, ids=IDS)
async def test_full_exchange(server, stage, camera, gen, dialect):
    async with running(client(stage, server, gen, dialect), client(camera, server, gen, dialect)):
        await server.actuator.wait_connected(5)
        await server.detector.wait_connected(5)
        assert server.actuator.generation is gen and server.detector.generation is gen
        # Infos arrived with the settings XML (units is what a PyMoDAQ move server expects)
        await _until(server.actuator, lambda: server.actuator.units == "mm")
        await _until(server.detector, lambda: server.detector.settings.get("exposure_ms") == 10.0)
        # move_abs -> move_done, then the position query
        assert await server.actuator.move_abs(12.5) == 12.5
        assert stage.position == 12.5
        assert await server.actuator.get_position() == 12.5
        assert await server.actuator.move_rel(-2.5) == 10.0
        assert await server.actuator.move_home() == 0.0
        # Send Data 2D -> Done with a 480x640 frame whose checksum matches on both sides
        frames = await server.detector.grab("2D")
        assert frames[0].shape == (480, 640) and frames[0].dtype == np.uint16
        assert crc(frames[0]) == crc(camera.sent[-1])
        assert server.detector.data is not None
        # set_info: the camera applies the parameter...
        server.detector.set_info(["exposure_ms"], parameter_to_xml("exposure_ms", 25.0))
        await _until(camera, lambda: camera.exposure_ms == 25.0)
        # ...and a change on the client's side comes back as Info_xml (issue 14 item 3)
        camera.set_setting("exposure_ms", "7.5")
        await _until(server.detector, lambda: server.detector.settings["exposure_ms"] == 7.5)
        server.actuator.set_setting("home", 2)
        await _until(stage, lambda: stage.home == 2.0)


async def _until(device, cond, timeout: float = 5.0) -> None:
    """Wait for ``cond()`` to hold, re-checked on each change event of ``device``."""
    changed = asyncio.Event()
    unsubscribe = device.subscribe(lambda _ch: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                changed.clear()
                await changed.wait()
    finally:
        unsubscribe()


@pytest.mark.parametrize("gen,dialect", MODES, ids=IDS)
async def test_spectrometer_1d_with_axis(server, gen, dialect):
    spec = Spectrometer("spectro", SimSpectrumBackend(pixels=256))
    async with running(client(spec, server, gen, dialect)):
        await server.detector.wait_connected(5)
        trace = (await server.detector.grab("1D"))[0]
        assert trace.shape == (256,)
        if gen is Generation.G3:
            dwa = server.detector.dte.data[0]
            assert dwa.axes[0].label == "wavelength" and dwa.axes[0].units == "nm"
            np.testing.assert_allclose(dwa.axes[0].data, np.linspace(400, 800, 256))
        else:
            await _until(server.detector, lambda: "x" in server.detector.axes)
            assert server.detector.axes["x"].units == "nm"


async def test_stop_motion_interrupts_a_move(server):
    slow = Stage("slow", SimStageBackend(speed=20.0))
    moving = asyncio.Event()
    slow.subscribe(lambda ch: moving.set() if ch.signal == "moving" and ch.value else None)
    async with running(client(slow, server, Generation.G3, Dialect.G1A)):
        await server.actuator.wait_connected(5)
        move = asyncio.ensure_future(server.actuator.move_abs(1000.0))
        await moving.wait()
        await server.actuator.stop_motion()
        final = await asyncio.wait_for(move, 5)
        assert 0 <= final < 1000.0
        assert server.actuator.position == final


async def test_client_reconnects_after_the_server_restarts(stage):
    srv = PyMoDAQServer("127.0.0.1", 0)
    await srv.start()
    port = srv.port
    c = PyMoDAQClient(stage, "127.0.0.1", port, generation=Generation.G3,
                      backoff=fast_backoff())
    async with running(c):
        await srv.actuator.wait_connected(5)
        await srv.stop()
        srv2 = PyMoDAQServer("127.0.0.1", port)
        await srv2.start()
        try:
            await srv2.actuator.wait_connected(10)
            assert c.connections == 2
            assert await srv2.actuator.move_abs(3.0) == 3.0
        finally:
            await srv2.stop()


async def test_second_client_of_a_type_replaces_the_first(server):
    s1, s2 = Stage("s1", SimStageBackend(position=1.0)), Stage("s2", SimStageBackend(position=2.0))
    c1 = client(s1, server, Generation.G3, Dialect.G1A)
    async with running(c1):
        await server.actuator.wait_connected(5)
        assert await server.actuator.get_position() == 1.0
        c2 = client(s2, server, Generation.G1, Dialect.G1B)
        async with running(c2):
            await c2.wait_connected(5)
            await _until(server.actuator, lambda: server.actuator.generation is Generation.G1)
            assert await server.actuator.get_position() == 2.0


async def test_requests_without_a_client_fail_clearly(server):
    with pytest.raises(RemoteUnavailable):
        await server.actuator.move_abs(1.0)
    with pytest.raises(RemoteUnavailable):
        await server.detector.grab()


async def test_silent_client_times_out_and_is_dropped(server):
    """A reply that comes too late would be taken for the next request's: drop the link."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(encode_message("GRABBER"))
        await server.detector.wait_connected(5)
        server.detector.timeout = 0.05
        with pytest.raises(TimeoutError):
            await server.detector.grab()
        await asyncio.wait_for(server.wait_closed_connections(1), 5)
        assert server.close_reasons[-1].startswith("timeout")
        assert not server.detector.connected
    finally:
        writer.close()
        await writer.wait_closed()


async def test_disconnect_fails_the_pending_request(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(encode_message("GRABBER"))
        await server.detector.wait_connected(5)
        pending = asyncio.ensure_future(server.detector.grab())
        assert await reader.readexactly(27) == encode_message("Send Data 2D")
        writer.close()
        with pytest.raises(RemoteUnavailable):
            await pending
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("gen,dialect", MODES, ids=IDS)
async def test_grab_stream_keeps_frames_in_order(server, gen, dialect):
    cam = RecordingCamera(width=64, height=48)
    async with running(client(cam, server, gen, dialect)):
        await server.detector.wait_connected(5)
        got = [f[0] async for f in server.detector.grab_stream(6, in_flight=3)]
        assert [crc(f) for f in got] == [crc(f) for f in cam.sent]
        # leaving a stream early: late replies are not taken for the next grab's
        async for _ in server.detector.grab_stream(5, in_flight=3):
            break
        frame = (await server.detector.grab())[0]
        # 6, then 4 sent by the abandoned stream (3 in flight + 1 refill), then 1
        assert crc(frame) == crc(cam.sent[-1]) and len(cam.sent) == 6 + 4 + 1


async def test_client_answers_both_position_queries(stage):
    """§9 #12: a labbridge client answers check_position and get_actuator_value."""
    from labbridge.protocol.pymodaq.g1 import G1Codec
    from labbridge.protocol.pymodaq.messages import GetPosition, PositionIs, Role

    srv = await asyncio.start_server(lambda r, w: conns.put_nowait((r, w)), "127.0.0.1", 0)
    conns: asyncio.Queue = asyncio.Queue()
    port = srv.sockets[0].getsockname()[1]
    await stage.move_abs(4.0)
    c = PyMoDAQClient(stage, "127.0.0.1", port, backoff=fast_backoff())
    async with running(c):
        reader, writer = await conns.get()
        codec = G1Codec(Role.SERVER)
        for query in ("check_position", "get_actuator_value"):
            writer.write(codec.send(GetPosition(query)))
            got = None
            while not isinstance(got, PositionIs):
                codec.receive_data(await reader.read(65536))
                while (ev := codec.next_event()).__class__.__name__ != "_NeedData":
                    got = ev if isinstance(ev, PositionIs) else got
            assert got.value == 4.0
        writer.close()
    srv.close()
    await srv.wait_closed()


async def test_node_kinds_build_from_examples(tmp_path):
    from labbridge.node.node import build_node

    node = build_node("examples/pymodaq-server.yaml", port=0, host="127.0.0.1")
    assert {"remote_stage", "remote_camera"} <= set(node.ctx.devices)
    await node.start()
    try:
        srv = node.services[0].server
        cam = RecordingCamera()
        c = PyMoDAQClient(cam, "127.0.0.1", srv.port, generation=Generation.G3,
                          backoff=fast_backoff())
        async with running(c):
            await node.ctx.devices["remote_camera"].wait_connected(5)
            frame = (await node.ctx.devices["remote_camera"].grab())[0]
            assert crc(frame) == crc(cam.sent[-1])
    finally:
        await node.stop()
    cam_node = build_node("examples/pymodaq-camera.yaml")
    assert cam_node.services[0].client.generation is Generation.G3


async def test_a_refused_move_still_gets_move_done(server):
    """ADR 0054: the server is answered with the actual position, not left waiting."""
    st = Stage("s", SimStageBackend(position=1.0), minimum=-5, maximum=5)
    async with running(client(st, server, Generation.G3, Dialect.G1A)):
        await server.actuator.wait_connected(5)
        assert await server.actuator.move_abs(1000.0) == 1.0
        assert await server.actuator.move_abs(2.0) == 2.0


async def test_unsendable_reply_is_logged_and_the_client_keeps_serving(server, caplog):
    """A 3-D frame cannot travel in dialect 1.6: the client says so and goes on serving."""
    from labbridge.devices.base import Device

    class Cube(Device):
        def __init__(self) -> None:
            super().__init__("cube")
            self.shape = (2, 2, 2)

        async def grab(self):
            return [np.zeros(self.shape)]

    cube = Cube()
    async with running(client(cube, server, Generation.G1, Dialect.G1A)):
        await server.detector.wait_connected(5)
        server.detector.timeout = 0.5
        with pytest.raises(TimeoutError):
            await server.detector.grab()
        assert any("cannot send Done" in r.getMessage() for r in caplog.records)
        cube.shape = (2, 2)
        await server.detector.wait_connected(5)  # dropped after the timeout, reconnected
        server.detector.timeout = 10
        assert (await server.detector.grab())[0].shape == (2, 2)


async def test_a_slow_move_does_not_block_the_detector(server, camera):
    slow = Stage("slow", SimStageBackend(speed=1.0))
    moving = asyncio.Event()
    slow.subscribe(lambda ch: moving.set() if ch.signal == "moving" and ch.value else None)
    async with running(client(slow, server, Generation.G3, Dialect.G1A),
                       client(camera, server, Generation.G1, Dialect.G1B)):
        await server.actuator.wait_connected(5)
        await server.detector.wait_connected(5)
        move = asyncio.ensure_future(server.actuator.move_abs(1000.0))
        await moving.wait()
        for _ in range(3):  # served while the move is in progress
            assert crc((await server.detector.grab())[0]) == crc(camera.sent[-1])
        assert not move.done()
        await server.actuator.stop_motion()
        assert await move < 1000.0


async def test_sockets_have_nodelay_and_keepalive(server, stage):
    import socket

    async with running(client(stage, server, Generation.G3, Dialect.G1A)) as (c,):
        await server.actuator.wait_connected(5)
        for stream in (c.stream, server.actuator.session.stream):
            sock = stream.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


@pytest.mark.parametrize("gen,dialect", MODES, ids=IDS)
async def test_position_during_a_move(server, gen, dialect):
    """Issue 14 item 2: while the axis moves, a position query is answered at once with the
    current position and the position also comes unasked; move_done ends the move."""
    slow = Stage("slow", SimStageBackend(speed=20.0))
    moving = asyncio.Event()
    slow.subscribe(lambda ch: moving.set() if ch.signal == "moving" and ch.value else None)
    live: list[float] = []
    server.actuator.subscribe(lambda ch: live.append(ch.value) if ch.signal == "position"
                              else None)
    async with running(client(slow, server, gen, dialect)):
        await server.actuator.wait_connected(5)
        move = asyncio.ensure_future(server.actuator.move_abs(1000.0))
        await moving.wait()
        first = await asyncio.wait_for(server.actuator.get_position(), 5)
        second = await asyncio.wait_for(server.actuator.get_position(), 5)
        assert 0.0 <= first <= second < 1000.0 and not move.done()
        await _until(server.actuator, lambda: len(live) >= 3)  # live values, unasked too
        await server.actuator.stop_motion()
        final = await asyncio.wait_for(move, 5)
    assert second <= final < 1000.0 and final == slow.position
    assert live == sorted(live) and live[-1] == final


async def test_settings_from_the_server_update_the_client_device(camera):
    """Issue 14 item 3: Infos, Info_xml and Info sent to a client are applied to its device
    (the seed lists them as messages a client may receive), and the client reports each change
    back with Info_xml like set_info."""
    from labbridge.protocol.pymodaq.codec import G3Codec
    from labbridge.protocol.pymodaq.messages import Info, Infos, InfoXml, Role
    from labbridge.protocol.pymodaq.settings_xml import DETECTOR_ROOT, settings_to_xml

    conns: asyncio.Queue = asyncio.Queue()
    srv = await asyncio.start_server(lambda r, w: conns.put_nowait((r, w)), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = PyMoDAQClient(camera, "127.0.0.1", port, generation=Generation.G3,
                      backoff=fast_backoff())
    codec = G3Codec(Role.SERVER)
    got: list = []

    async def receive_until(pred):
        while not any(pred(m) for m in got):
            codec.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            while (ev := codec.next_event()).__class__.__name__ != "_NeedData":
                got.append(ev)

    async with running(c):
        reader, writer = await asyncio.wait_for(conns.get(), 5)
        await receive_until(lambda m: isinstance(m, Infos))
        writer.write(codec.send(Infos(settings_to_xml({"exposure_ms": 11.0},
                                                      root=DETECTOR_ROOT))))
        await _until(camera, lambda: camera.exposure_ms == 11.0)
        writer.write(codec.send(InfoXml(("detector_settings", "exposure_ms"),
                                        parameter_to_xml("exposure_ms", 12.0))))
        await _until(camera, lambda: camera.exposure_ms == 12.0)
        writer.write(codec.send(Info("exposure_ms", "13.5")))
        await _until(camera, lambda: camera.exposure_ms == 13.5)
        await receive_until(lambda m: isinstance(m, InfoXml) and "13.5" in m.xml)
        writer.close()
    srv.close()
    await srv.wait_closed()
    echoes = [m.xml for m in got if isinstance(m, InfoXml)]
    assert [m.path for m in got if isinstance(m, InfoXml)] == [
        ("detector_settings", "exposure_ms")] * 3
    assert [e.split(">")[1].split("<")[0] for e in echoes] == ["11.0", "12.0", "13.5"]


async def test_server_forgets_a_clients_settings_when_it_leaves(server, stage):
    """Issue 14 item 3: after a client leaves, its settings (units...) are gone, so a new
    client's moves never carry them."""
    async with running(client(stage, server, Generation.G3, Dialect.G1A)):
        await server.actuator.wait_connected(5)
        await _until(server.actuator, lambda: server.actuator.units == "mm")
    await _until(server.actuator, lambda: not server.actuator.connected)
    assert server.actuator.settings == {} and server.actuator.units == ""
    assert server.actuator.settings_xml is None and server.actuator.infos == {}


@pytest.mark.parametrize("gen,dialect", MODES, ids=IDS)
async def test_send_data_dimension_is_honoured(server, gen, dialect):
    """Issue 15 item 8 [lb]: Send Data 0D gives one value per channel, 1D a profile, 2D the
    frame (real viewers ignore the dimension; docs/pymodaq.md lists the difference)."""
    cam = RecordingCamera(width=6, height=4)
    async with running(client(cam, server, gen, dialect)):
        await server.detector.wait_connected(5)
        zero = (await server.detector.grab("0D"))[0]
        assert zero.size == 1 and float(zero.reshape(-1)[0]) == pytest.approx(
            float(cam.sent[-1].mean()))
        one = (await server.detector.grab("1D"))[0]
        assert one.shape == (6,) and np.allclose(one, cam.sent[-1].mean(axis=0))
        two = (await server.detector.grab("2D"))[0]
        assert two.shape == (4, 6) and crc(two) == crc(cam.sent[-1])
