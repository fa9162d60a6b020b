"""Device and service kinds of the Pychron family (valves, flags, gauges, command server)."""

from __future__ import annotations

import logging
from typing import Any

from labbridge.devices.backends import GaugeBackend, ValveBackend
from labbridge.devices.backends.sim import (
    GAUGE_BASE,
    SimGaugeBackend,
    SimValveBackend,
    gauge_type_for,
)
from labbridge.devices.flags import Flag
from labbridge.devices.gauges import GaugeController
from labbridge.devices.valves import (
    SwitchKind,
    ValveBank,
    ValveConfig,
    parse_names,
)
from labbridge.node.config import ConfigError, Section, load_yaml
from labbridge.node.registry import NodeContext, register_device

# ============================================================================================
# DEVICE KINDS: valve_bank, flag, gauge_controller  (owner: devices; docs/devices.md)
# ============================================================================================
# Node file shapes (every field read through Section getters, so errors name file/line/field):
#
#   - kind: valve_bank
#     name: valves
#     check_ownership: false          # refuse Open/Close of a valve owned by another peer
#     timeout: 5.0                    # seconds a backend call may take before REFUSED
#     state_file: valves.json         # default <state_dir>/<name>.json; persist: false = none
#     backend: {kind: sim, delay: 0.0, readback: true}
#     #   or    {kind: modbus, host: 10.0.0.20, port: 502, unit: 1, timeout: 1.0}
#     valves_file: valves.yaml        # optional: a Pychron-style valves list (spec 16.4)
#     valves:                         # spec 16.4 keys, plus kind/enabled/layout/initially_*
#       - {name: A, address: 0, description: inlet, interlock: [B], settling_time: 0.5}
#
#   - {kind: flag, name: AFlag, auto_clear: 60, check_period: 5}
#   - {kind: gauge_controller, name: gauges, gauges: [IG, CG1, CG2], backend: {kind: sim}}

_log = logging.getLogger(__name__)

_SWITCH_KINDS = {"valve": SwitchKind.VALVE, "switch": SwitchKind.SWITCH,
                 "manual": SwitchKind.MANUAL, "manual_switch": SwitchKind.MANUAL}

#: Keys of a real Pychron valves file (spec 16.4) that labbridge accepts and ignores, so a
#: valves file copied from pyValve loads as it is.
_PYCHRON_IGNORED_KEYS = ("actuator", "state_device", "check_actuation_enabled",
                         "check_actuation_delay", "track", "ignore_lock_warning", "parent")


def _names(sec: Section, key: str) -> tuple[str, ...]:
    """An interlock list: ``B``, ``"B,C"`` or ``[B, C]``."""
    if isinstance(sec.raw().get(key), list):
        items = sec.get_list(key)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise sec.error(key, f"expected valve names, got {item!r}")
        return parse_names([str(i) for i in items])
    return parse_names(sec.get_str(key, ""))


def _valve_config(sec: Section, backend_kind: str) -> ValveConfig:
    name = sec.get_str("name")
    if not name or name != name.strip() or "," in name:
        raise sec.error("name", f"a valve name may not be empty or hold commas or surrounding "
                        f"spaces: {name!r}")
    kind_name = sec.get_str("kind", "valve").lower()
    if kind_name not in _SWITCH_KINDS:
        raise sec.error("kind", f"must be one of valve, switch, manual; got {kind_name!r}")
    address = sec.get_str("address", "")
    if backend_kind == "modbus" and _SWITCH_KINDS[kind_name] is not SwitchKind.MANUAL:
        from labbridge.devices.backends.modbus import coil_address

        try:
            coil_address(address)
        except ValueError as exc:
            raise sec.error("address", str(exc)) from None
    layout = None
    lay = sec.get_section("layout", None)
    if lay is not None:
        layout = {"x": lay.get_float("x"), "y": lay.get_float("y")}
        lay.check_no_unknown()
    cfg = ValveConfig(
        name=name,
        address=address,
        kind=_SWITCH_KINDS[kind_name],
        description=sec.get_str("description", ""),
        enabled=sec.get_bool("enabled", True),
        interlocks=_names(sec, "interlock"),
        positive_interlocks=_names(sec, "positive_interlock"),
        inverted_logic=sec.get_bool("inverted_logic", False),
        settling_time=sec.get_float("settling_time", 0.0, min=0.0, max=3600.0),
        query_state=sec.get_bool("query_state", True),
        initially_open=sec.get_bool("initially_open", False),
        initially_locked=sec.get_bool("initially_locked", False),
        layout=layout,
    )
    ignored = [k for k in _PYCHRON_IGNORED_KEYS if k in sec]
    if ignored:
        _log.info("%s: valve %s: ignoring Pychron keys %s", sec.file, name, ", ".join(ignored))
    sec.check_no_unknown(allowed_extra=_PYCHRON_IGNORED_KEYS)
    return cfg


def _valve_sections(sec: Section, ctx: NodeContext) -> list[Section]:
    out: list[Section] = list(sec.get_sections("valves", []))
    vfile = sec.get_str("valves_file", None)
    if vfile is not None:
        path = ctx.resolve_path(vfile)
        data = load_yaml(path)
        if isinstance(data, dict) and "valves" in data:
            out.extend(Section(data, file=str(path)).get_sections("valves"))
        elif isinstance(data, list):
            out.extend(Section({"valves": data}, file=str(path)).get_sections("valves"))
        else:
            raise ConfigError("a valves file holds a list of valves (or a 'valves:' list)",
                              file=str(path), line=1)
    if not out:
        raise sec.error("valves", "a valve bank needs at least one valve (valves or "
                        "valves_file)")
    return out


def _valve_backend(sec: Section | None) -> tuple[str, ValveBackend]:
    if sec is None:
        return "sim", SimValveBackend()
    kind = sec.get_choice("kind", ("sim", "modbus"), "sim")
    if kind == "sim":
        backend: ValveBackend = SimValveBackend(
            delay=sec.get_float("delay", 0.0, min=0.0, max=3600.0),
            readback=sec.get_bool("readback", True))
    else:
        try:
            from labbridge.devices.backends.modbus import ModbusCoilBackend
        except ImportError:
            raise sec.error("kind", "the modbus backend needs pymodbus: "
                            "pip install 'labbridge[modbus]'") from None
        backend = ModbusCoilBackend(
            sec.get_str("host"), sec.get_port("port", 502),
            unit=sec.get_int("unit", 1, min=0, max=255),
            timeout=sec.get_float("timeout", 1.0, min=0.001, max=600.0))
    sec.check_no_unknown()
    return kind, backend


@register_device("valve_bank")
def _make_valve_bank(sec: Section, ctx: NodeContext) -> ValveBank:
    name = sec.get_str("name")
    backend_kind, backend = _valve_backend(sec.get_section("backend", None))
    cfgs: list[ValveConfig] = []
    where: dict[str, Section] = {}
    for vsec in _valve_sections(sec, ctx):
        cfg = _valve_config(vsec, backend_kind)
        if cfg.name in where:
            raise vsec.error("name", f"duplicate valve name {cfg.name!r}")
        where[cfg.name] = vsec
        cfgs.append(cfg)
    for cfg in cfgs:
        for key, others in (("interlock", cfg.interlocks),
                            ("positive_interlock", cfg.positive_interlocks)):
            for other in others:
                if other not in where or other == cfg.name:
                    raise where[cfg.name].error(
                        key, f"valve {cfg.name}: interlock names "
                        + ("itself" if other == cfg.name else f"unknown valve {other!r}"))
    state_file = None
    if sec.get_bool("persist", True):
        sf = sec.get_str("state_file", None)
        state_file = ctx.resolve_path(sf) if sf else ctx.state_dir / f"{name}.json"
    return ValveBank(name, cfgs, backend, state_file=state_file,
                     check_ownership=sec.get_bool("check_ownership", False),
                     timeout=sec.get_float("timeout", 5.0, min=0.001, max=3600.0))


@register_device("flag")
def _make_flag(sec: Section, ctx: NodeContext) -> Flag:
    value: Any = sec.get_float("value", 0.0)
    return Flag(sec.get_str("name"), value=value,
                auto_clear=sec.get_float("auto_clear", 60.0, min=0.0),
                check_period=sec.get_float("check_period", 5.0, min=0.001, max=3600.0))


def _gauge_backend(sec: Section | None, gauges: dict[str, tuple[str, float | None]]
                   ) -> GaugeBackend:
    kind = "sim" if sec is None else sec.get_choice("kind", ("sim",), "sim")
    assert kind == "sim"
    backend = SimGaugeBackend(
        noise=0.03 if sec is None else sec.get_float("noise", 0.03, min=0.0, max=1.0),
        seed=None if sec is None else sec.get_int("seed", None))
    if sec is not None:
        sec.check_no_unknown()
    for gname, (gtype, base) in gauges.items():
        backend.add_gauge(gname, gtype, base)
    return backend


@register_device("gauge_controller")
def _make_gauge_controller(sec: Section, ctx: NodeContext) -> GaugeController:
    gauges: dict[str, tuple[str, float | None]] = {}
    raw = sec.get_list("gauges")
    if not raw:
        raise sec.error("gauges", "a gauge controller needs at least one gauge")
    for item in raw:
        if isinstance(item, dict):
            gsec = Section(item, file=sec.file, path=sec.field_name("gauges"),
                           line=getattr(item, "line", sec.line_of("gauges")))
            gname = gsec.get_str("name")
            gtype = gsec.get_choice("type", tuple(GAUGE_BASE), gauge_type_for(gname))
            base = gsec.get_float("base", None, min=1e-15, max=1e4)
            gsec.check_no_unknown()
        elif isinstance(item, str) and item:
            gname, gtype, base = item, gauge_type_for(item), None
        else:
            raise sec.error("gauges", f"a gauge is a name or a mapping, got {item!r}")
        if gname in gauges:
            raise sec.error("gauges", f"duplicate gauge {gname!r}")
        gauges[gname] = (gtype, base)
    backend = _gauge_backend(sec.get_section("backend", None), gauges)
    poll = sec.get_float("poll_period", 0.0, min=0.0, max=86400.0)
    return GaugeController(sec.get_str("name"), list(gauges), backend,
                           timeout=sec.get_float("timeout", 5.0, min=0.001, max=600.0),
                           poll_period=poll or None)


# ============================================================================================
# END OF DEVICE KINDS. Service kinds (pychron command server) follow below.
# ============================================================================================
