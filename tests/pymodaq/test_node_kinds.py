"""Node-file kinds of the PyMoDAQ family: good files build, bad fields name file/line/field."""

from __future__ import annotations

import pytest

from labbridge.links.pymodaq import RemoteActuator, RemoteDetector
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from labbridge.protocol.pymodaq.messages import Dialect, Generation


def _node(tmp_path, text: str):
    p = tmp_path / "node.yaml"
    p.write_text(text)
    return build_node(p)


def test_full_file_builds(tmp_path):
    node = _node(tmp_path, """
node: n
devices:
  - {kind: stage, name: st, units: um, min: -1, max: 1, backend: {kind: sim, speed: 2}}
  - {kind: spectrometer, name: sp, pixels: 16}
  - {kind: camera, name: cam, width: 8, height: 4, dtype: uint8}
services:
  - {kind: pymodaq_server, name: srv, port: 0, actuator: a, detector: d, move_timeout: null,
     g1_dialect: "2.1", g1_dialect_detect: fixed, max_message_mb: 1, max_per_address: 2,
     message_timeout: 5, max_buffered_mb: 3}
  - {kind: pymodaq_client, name: c1, device: st, server: "10.0.0.1:6341", g1_dialect: "2.1",
     max_queue: 8, position_interval: null, message_timeout: 7}
  - {kind: pymodaq_client, name: c2, device: a, server: "[::1]:7000", generation: g3}
""")
    assert isinstance(node.ctx.devices["a"], RemoteActuator)
    assert isinstance(node.ctx.devices["d"], RemoteDetector)
    srv = node.services[0].server
    assert srv.actuator.move_timeout is None and srv.dialect is Dialect.G1B
    assert not srv.detect_dialect and srv.max_message == 1024 * 1024
    assert srv.host == "127.0.0.1"  # safe by default: loopback unless the file names a host
    assert (srv.max_per_address, srv.message_timeout, srv.budget.limit) == (2, 5.0, 3 * 1024**2)
    c1, c2 = node.services[1].client, node.services[2].client
    assert (c1.host, c1.port, c1.generation, c1.dialect) == ("10.0.0.1", 6341, Generation.G1,
                                                             Dialect.G1B)
    assert (c1.max_queue, c1.position_interval, c1.message_timeout) == (8, None, 7.0)
    assert (c2.host, c2.port, c2.generation) == ("::1", 7000, Generation.G3)  # a relay
    assert (c2.max_queue, c2.position_interval) == (64, 0.1)
    ep = node.services[1].endpoints()[0]
    assert ep.role == "connect" and ep.port == 6341


@pytest.mark.parametrize("service,field", [
    ("{kind: pymodaq_client, device: cam}", "server"),
    ("{kind: pymodaq_client, device: cam, server: nowhere}", "server"),
    ("{kind: pymodaq_client, device: cam, server: 'h:1', generation: g2}", "generation"),
    ("{kind: pymodaq_client, device: nope, server: 'h:1'}", "device"),
    ("{kind: pymodaq_server, port: 70000}", "port"),
    ("{kind: pymodaq_server, detector: cam}", "detector"),
    ("{kind: pymodaq_server, g1_dialect: '3.0'}", "g1_dialect"),
    ("{kind: pymodaq_server, colour: blue}", "colour"),
    ("{kind: pymodaq_server, max_per_address: 0}", "max_per_address"),
    ("{kind: pymodaq_client, device: cam, server: 'h:1', max_queue: 0}", "max_queue"),
])
def test_bad_fields_are_reported_with_their_place(tmp_path, service, field):
    with pytest.raises(ConfigError) as ei:
        _node(tmp_path, f"""
node: n
devices:
  - {{kind: camera, name: cam}}
services:
  - {service}
""")
    assert ei.value.field is not None and ei.value.field.endswith(field)
    assert ei.value.line == 6
