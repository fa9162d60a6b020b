"""Non-finite targets and home are refused (ValueError, no motion), locally and over PyMoDAQ.

With the default limits (+-inf) an infinite target used to pass the range check; the simulated
backend then computed a NaN position and looped for ever holding the stage lock, so every
later move blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient, PyMoDAQServer
from labbridge.protocol.pymodaq.messages import Dialect, Generation
from labbridge.protocol.pymodaq.settings_xml import parameter_to_xml
from labbridge.transport.backoff import Backoff

T = 10.0
BAD = [math.inf, -math.inf, math.nan]


@pytest.mark.parametrize("bad", BAD, ids=["inf", "-inf", "nan"])
async def test_non_finite_moves_are_refused_and_the_stage_keeps_moving(bad):
    st = Stage("s", SimStageBackend(position=1.0, speed=1000.0))
    with pytest.raises(ValueError, match="finite"):
        await asyncio.wait_for(st.move_abs(bad), T)
    with pytest.raises(ValueError, match="finite"):
        await asyncio.wait_for(st.move_rel(bad), T)
    assert await st.get_position() == 1.0
    assert await asyncio.wait_for(st.move_abs(2.0), T) == 2.0  # the lock is free
    assert await asyncio.wait_for(st.move_rel(-0.5), T) == 1.5


async def test_a_finite_delta_that_overflows_is_refused():
    st = Stage("s", SimStageBackend(position=1.7e308))
    with pytest.raises(ValueError, match="finite"):
        await asyncio.wait_for(st.move_rel(1.7e308), T)
    assert await st.get_position() == 1.7e308


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "Infinity", "x"])
async def test_non_finite_home_setting_is_refused(bad):
    st = Stage("s", SimStageBackend(speed=1000.0), home=3.0)
    with pytest.raises(ValueError):
        st.set_setting("home", bad)
    assert st.home == 3.0
    assert await asyncio.wait_for(st.move_home(), T) == 3.0


@pytest.mark.parametrize("bad", BAD, ids=["inf", "-inf", "nan"])
async def test_construction_and_backend_refuse_non_finite_values(bad):
    with pytest.raises(ValueError, match="home"):
        Stage("s", SimStageBackend(), home=bad)
    with pytest.raises(ValueError, match="position"):
        SimStageBackend(position=bad)
    backend = SimStageBackend(speed=1000.0)
    with pytest.raises(ValueError, match="target"):
        await asyncio.wait_for(backend.move_to(bad), T)
    assert backend.position == 0.0


async def test_pymodaq_refusals_answer_and_keep_the_connection(caplog):
    """The PyMoDAQ client answers a refused move with move_done at the actual position and
    logs a refused set_info; the connection stays up and later moves work."""
    srv = PyMoDAQServer("127.0.0.1", 0)
    await srv.start()
    st = Stage("s", SimStageBackend(position=1.0, speed=1000.0), units="mm")
    assert srv.port is not None
    client = PyMoDAQClient(st, "127.0.0.1", srv.port, generation=Generation.G3,
                           dialect=Dialect.G1A, backoff=Backoff(initial=0.01, maximum=0.05))
    await client.start()
    try:
        act = srv.actuator
        await act.wait_connected(T)
        session = act.session
        assert await asyncio.wait_for(act.move_abs(math.inf), T) == 1.0
        assert await asyncio.wait_for(act.move_rel(-math.inf), T) == 1.0
        act.set_info(["home"], parameter_to_xml("home", math.inf))
        # Commands run in order: once the next move is answered, set_info has been applied.
        assert await asyncio.wait_for(act.move_abs(2.0), T) == 2.0
        assert st.home == 0.0
        assert any("set_info home" in r.getMessage() and "refused" in r.getMessage()
                   for r in caplog.records)
        assert await asyncio.wait_for(act.move_home(), T) == 0.0
        assert act.session is session and srv.sessions == 1  # never dropped
    finally:
        with contextlib.suppress(Exception):
            await client.stop()
        await srv.stop()
