"""Device kind ``furnace`` (the furPi's simulated resistance furnace) and its command set.

Node file shape (every field optional except ``name``)::

    - kind: furnace
      name: furnace
      setpoint: 22               # initial setpoint, degrees C
      ramp_rate: 0               # degrees C per minute; 0 = step changes
      pid: {kp: 4.0, ki: 0.04, kd: 0.0}
      watchdog: {timeout: 30, safe_setpoint: 0}   # seconds without a client; 0 = off
      time_scale: 1.0            # simulated seconds per real second (demos: 60)
      tick: 0.1                  # seconds between model updates
      seed: 1                    # noise seed (omit for a random one)
      version: "1.0"             # GetVersion reply (the real client wants d.d[.d])
      di_channels: {h2o: true}   # digital inputs answered by GetDIState
      model: {ambient: 22, heat_capacity: 3000, loss: 2.0, radiative: 1.1e-10,
              max_power: 2500, heater_lag: 8, noise: 0.05, resolution: 0.01,
              max_temperature: 1600}
      funnel: {up: 0, down: 40000, tolerance: 100}   # the funnel drive's positions, steps
      magnets: 3                 # dumper magnets energized one after the other
      bakeout_channels: 2        # bake-out heaters (channels 1..n)
      broadcast: false           # true: the furPi broadcast (HeartBeat <time> every 2 s,
                                 # the full summary every 10th) as device changes, which the
                                 # node's notifier publishes

The command server of the node serves the furnace vocabulary
(:class:`~labbridge.links.pychron.furnace.FurnaceCommands`) next to the valves: this module
appends a builder to ``COMMAND_SET_BUILDERS``.
"""

from __future__ import annotations

from labbridge.devices.base import Device
from labbridge.devices.furnace import (
    FunnelConfig,
    Furnace,
    FurnaceModel,
    FurnaceParams,
    PIDGains,
    WatchdogConfig,
)
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.dispatch import CommandSet
from labbridge.links.pychron.furnace import FurnaceCommands
from labbridge.node.config import ConfigError, Section
from labbridge.node.kinds import pychron_server
from labbridge.node.registry import NodeContext, register_device

_MODEL_FIELDS = {
    "ambient": (-50.0, 100.0), "heat_capacity": (1.0, 1e7), "loss": (0.0, 1e5),
    "radiative": (0.0, 1e-3), "max_power": (1.0, 1e7), "heater_lag": (0.01, 3600.0),
    "noise": (0.0, 100.0), "resolution": (0.0, 10.0), "max_temperature": (0.0, 5000.0),
}


@register_device("furnace")
def _make_furnace(sec: Section, ctx: NodeContext) -> Furnace:
    params = FurnaceParams()
    msec = sec.get_section("model", None)
    if msec is not None:
        values = {k: msec.get_float(k, getattr(params, k), min=lo, max=hi)
                  for k, (lo, hi) in _MODEL_FIELDS.items()}
        msec.check_no_unknown()
        params = FurnaceParams(**values)
    gains = PIDGains()
    psec = sec.get_section("pid", None)
    if psec is not None:
        gains = PIDGains(psec.get_float("kp", gains.kp, min=0.0),
                         psec.get_float("ki", gains.ki, min=0.0),
                         psec.get_float("kd", gains.kd, min=0.0))
        psec.check_no_unknown()
    model = FurnaceModel(params, gains, ramp_rate=sec.get_float("ramp_rate", 0.0, min=0.0),
                         seed=sec.get_int("seed", None))
    setpoint = sec.get_float("setpoint", params.ambient, min=-273.0,
                             max=params.max_temperature)
    model.set_setpoint(setpoint)
    model.working_setpoint = setpoint
    watchdog = WatchdogConfig()
    wsec = sec.get_section("watchdog", None)
    if wsec is not None:
        watchdog = WatchdogConfig(
            timeout=wsec.get_float("timeout", 0.0, min=0.0, max=86400.0),
            safe_setpoint=wsec.get_float("safe_setpoint", 0.0, min=-273.0,
                                         max=params.max_temperature))
        wsec.check_no_unknown()
    di: dict[str, bool] = {}
    for key, value in (sec.get_mapping("di_channels", {}) or {}).items():
        if not isinstance(value, bool):
            raise sec.error("di_channels", f"channel {key!r}: expected true or false")
        di[str(key)] = value
    funnel = FunnelConfig()
    fsec = sec.get_section("funnel", None)
    if fsec is not None:
        funnel = FunnelConfig(fsec.get_float("up", funnel.up, min=-1e7, max=1e7),
                              fsec.get_float("down", funnel.down, min=-1e7, max=1e7),
                              fsec.get_float("tolerance", funnel.tolerance, min=0.0, max=1e6))
        fsec.check_no_unknown()
    return Furnace(sec.get_str("name"), model,
                   time_scale=sec.get_float("time_scale", 1.0, min=0.001, max=1e4),
                   tick=sec.get_float("tick", 0.1, min=0.001, max=60.0),
                   watchdog=watchdog, version=sec.get_str("version", "1.0"),
                   di_channels=di,
                   lab_humidity=sec.get_float("lab_humidity", 35.0, min=0.0, max=100.0),
                   funnel=funnel, magnets=sec.get_int("magnets", 3, min=1, max=16),
                   bakeout_channels=sec.get_int("bakeout_channels", 2, min=0, max=16),
                   broadcast=sec.get_bool("broadcast", False),
                   broadcast_period=sec.get_float("broadcast_period", 2.0, min=0.01,
                                                  max=3600.0))


def _furnace_set(devices: list[Device]) -> CommandSet | None:
    furnaces = [d for d in devices if isinstance(d, Furnace)]
    if not furnaces:
        return None
    if len(furnaces) > 1:
        raise ConfigError("one command server serves one furnace (the furPi vocabulary has "
                         "no furnace argument); list the furnace in 'devices'")
    if any(d.kind == "laser" for d in devices):
        raise ConfigError("a furnace and a laser on one command server: both vocabularies "
                          "have GetPosition (the furPi's drives, the laser's stage); give each "
                          "its own pychron_command_server (devices: [...])")
    banks = [d for d in devices if isinstance(d, ValveBank)]
    return FurnaceCommands(furnaces[0], banks)


pychron_server.COMMAND_SET_BUILDERS.append(_furnace_set)
