"""The valve_bank, flag and gauge_controller kinds in a node file (node/kinds/pychron.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labbridge.devices.backends.modbus import ModbusCoilBackend
from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.flags import Flag
from labbridge.devices.gauges import GaugeController
from labbridge.devices.valves import Outcome, SwitchKind, ValveBank
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node

NODE = """\
node: test-node
devices:
  - kind: valve_bank
    name: valves
    check_ownership: true
    backend: {kind: sim, delay: 0.0}
    valves:
      - {name: A, address: 1, description: inlet, interlock: B, layout: {x: 1, y: 2}}
      - {name: B, address: 2, positive_interlock: [C], settling_time: 0.5}
      - {name: C, kind: manual}
      - {name: D, enabled: false, inverted_logic: true, query_state: false, actuator: relay}
  - {kind: flag, name: AFlag, auto_clear: 30}
  - kind: gauge_controller
    name: gauges
    gauges: [IG, CG1, {name: CG2, type: convectron, base: 0.5}]
    backend: {kind: sim, seed: 1}
"""


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


async def test_node_file_builds_the_devices(tmp_path: Path) -> None:
    node = build_node(write(tmp_path, NODE))
    bank, flag, gauges = (node.ctx.devices[n] for n in ("valves", "AFlag", "gauges"))
    assert isinstance(bank, ValveBank) and isinstance(flag, Flag)
    assert isinstance(gauges, GaugeController)
    assert bank.names == ["A", "B", "C", "D"] and bank.check_ownership
    assert isinstance(bank.backend, SimValveBackend)
    a, b, c, d = (bank.config(n) for n in "ABCD")
    assert a.interlocks == ("B",) and a.layout == {"x": 1.0, "y": 2.0} and a.address == "1"
    assert b.positive_interlocks == ("C",) and b.settling_time == 0.5
    assert c.kind is SwitchKind.MANUAL
    assert not d.enabled and d.inverted_logic and not d.query_state
    assert bank.state_file == tmp_path / ".labbridge-state" / "test-node" / "valves.json"
    assert flag.auto_clear == 30.0
    assert gauges.gauges == ["IG", "CG1", "CG2"]
    await node.start()
    try:
        assert (await bank.open("C")).outcome is Outcome.ACTUATED
        assert 0.1 < await gauges.pressure("CG2") < 2.0
    finally:
        await node.stop()
    saved = json.loads(bank.state_file.read_text())  # type: ignore[union-attr]
    assert saved["valves"]["C"]["state"] is True


async def test_state_survives_a_node_restart(tmp_path: Path) -> None:
    path = write(tmp_path, NODE)
    node = build_node(path)
    await node.start()
    bank = node.ctx.devices["valves"]
    assert isinstance(bank, ValveBank)
    await bank.open("C")
    bank.lock("A")
    await node.stop()
    node2 = build_node(path)
    await node2.start()
    try:
        bank2 = node2.ctx.devices["valves"]
        assert isinstance(bank2, ValveBank)
        assert bank2.is_open("C") and bank2.is_locked("A") and not bank2.is_locked("B")
    finally:
        await node2.stop()


def test_modbus_backend_and_valves_file(tmp_path: Path) -> None:
    write(tmp_path, "- {name: A, address: 0}\n- {name: B, address: 1, track: true}\n",
          "valves.yaml")
    node = build_node(write(tmp_path, """\
node: n
devices:
  - kind: valve_bank
    name: line
    persist: false
    backend: {kind: modbus, host: 127.0.0.1, port: 5020, unit: 7, timeout: 0.5}
    valves_file: valves.yaml
"""))
    bank = node.ctx.devices["line"]
    assert isinstance(bank, ValveBank) and bank.names == ["A", "B"]
    assert bank.state_file is None
    assert isinstance(bank.backend, ModbusCoilBackend)
    assert (bank.backend.port, bank.backend.unit, bank.backend.timeout) == (5020, 7, 0.5)


BAD = [
    ("      - {name: A, interlock: Q}\n", 6, "valves[0].interlock", "unknown valve 'Q'"),
    ("      - {name: A}\n      - {name: A}\n", 7, "valves[1].name", "duplicate valve"),
    ("      - {name: A, settling_time: -1}\n", 6, "settling_time", "at least 0"),
    ("      - {name: A, kind: pump}\n", 6, "valves[0].kind", "valve, switch, manual"),
    ("      - {name: A, colour: red}\n", 6, "valves[0].colour", "unknown field"),
    ("      - {name: A, enabled: maybe}\n", 6, "valves[0].enabled", "true or false"),
    ("      - {name: A, layout: {x: 1}}\n", 6, "layout.y", "missing"),
]


@pytest.mark.parametrize(("valves", "line", "field", "words"), BAD,
                         ids=[b[2] for b in BAD])
def test_valve_errors_name_file_line_field(tmp_path: Path, valves: str, line: int,
                                           field: str, words: str) -> None:
    text = "node: n\ndevices:\n  - kind: valve_bank\n    name: valves\n    valves:\n" + valves
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        build_node(path)
    e = err.value
    assert e.file == str(path) and e.line == line and field in (e.field or "")
    assert words in e.message


def test_modbus_address_must_be_a_coil(tmp_path: Path) -> None:
    text = ("node: n\ndevices:\n  - kind: valve_bank\n    name: v\n"
            "    backend: {kind: modbus, host: h}\n    valves:\n      - {name: A, address: X1}\n")
    with pytest.raises(ConfigError, match=r"node.yaml:7: devices\[0\].valves\[0\].address"):
        build_node(write(tmp_path, text))


def test_backend_errors(tmp_path: Path) -> None:
    base = "node: n\ndevices:\n  - kind: valve_bank\n    name: v\n    valves: [{name: A}]\n"
    for backend, words in (("{kind: serial}", "must be one of sim, modbus"),
                           ("{kind: modbus}", "host: required field is missing"),
                           ("{kind: modbus, host: h, unit: 300}", "at most 255"),
                           ("{kind: sim, speed: 3}", "unknown field 'speed'")):
        with pytest.raises(ConfigError, match=words):
            build_node(write(tmp_path, base + f"    backend: {backend}\n"))


def test_gauge_and_flag_errors(tmp_path: Path) -> None:
    base = "node: n\ndevices:\n"
    for dev, words in (("{kind: gauge_controller, name: g, gauges: []}", "at least one"),
                       ("{kind: gauge_controller, name: g, gauges: [IG, IG]}", "duplicate"),
                       ("{kind: gauge_controller, name: g, gauges: [{name: X, type: pirani}]}",
                        "must be one of"),
                       ("{kind: flag, name: F, auto_clear: -3}", "at least 0"),
                       ("{kind: flag, name: F, colour: red}", "unknown field")):
        with pytest.raises(ConfigError, match=words):
            build_node(write(tmp_path, base + f"  - {dev}\n"))
