"""Device structs and command codes (spec hexrotcomm.md §3.10, §4, §5.4, §5.7).

A :class:`DeviceSpec` bundles what differs between controllers: the config and telemetry
layouts, the command codes, the gen-A sync pattern and gen-A frame ids, and the names of the
fields the client-side model reads (state, position, limits).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from labbridge.protocol.hexrotcomm.layout import Layout
from labbridge.protocol.hexrotcomm.structs import Generation


class SimpleCommandCode(enum.IntEnum):
    """SimpleMockController command codes, generation D (spec §3.10)."""

    SET_STATE = 1
    ENABLE_DRIVES = 2
    SET_ENABLED_SUBSTATE = 3
    MOVE = 4


class SimpleCommandCodeA(enum.IntEnum):
    """SimpleMockController command codes, generation A (spec §5.7, v0.22.0)."""

    SET_STATE = 1
    SET_ENABLED_SUBSTATE = 2
    MOVE = 3


class RotatorCommandCodeA(enum.IntEnum):
    """MTRotator command codes of generation A (spec §5.5, ts_mtrotator v0.18.0)."""

    SET_STATE = 0x8000
    FAULT = 0x8001
    SET_ENABLED_SUBSTATE = 0x8002
    POSITION_SET = 0x8007
    SET_CONSTANT_VEL = 0x800B
    CONFIG_VEL = 0x9001
    CONFIG_ACCEL = 0x9002
    TRACK_VEL_CMD = 0x9031


class RotatorCommandCode(enum.IntEnum):
    """MTRotator command codes (spec §4.1); gen A has no ENABLE_DRIVES nor the emergency codes."""

    ENABLE_DRIVES = 0x7000
    SET_STATE = 0x8000
    FAULT = 0x8001
    SET_ENABLED_SUBSTATE = 0x8002
    POSITION_SET = 0x8007
    SET_CONSTANT_VEL = 0x800B
    CONFIG_VEL = 0x9001
    CONFIG_ACCEL = 0x9002
    CONFIG_ACCEL_EMERGENCY = 0x9003
    CONFIG_JERK_EMERGENCY = 0x9004
    CONFIG_JERK = 0x9005
    TRACK_VEL_CMD = 0x9031


class RotatorEnabledSubstateParam(enum.IntEnum):
    ENABLED_INVALID = 0
    MOVE_POINT_TO_POINT = 1
    TRACK = 2
    STOP = 3
    INITIALIZE = 4
    RELATIVE = 5
    CONSTANT_VELOCITY = 6
    SPARE2 = 7
    MOVE_LUT = 8


class HexapodCommandCode(enum.IntEnum):
    """MTHexapod command codes (spec §4.2)."""

    ENABLE_DRIVES = 0x7000
    SET_STATE = 0x8000
    SET_ENABLED_SUBSTATE = 0x8001
    POSITION_SET = 0x8004
    SET_PIVOTPOINT = 0x8007
    CONFIG_ACCEL = 0x800B
    CONFIG_VEL = 0x800C
    CONFIG_LIMITS = 0x800D
    OFFSET = 0x8010


class HexapodEnabledSubstateParam(enum.IntEnum):
    """``param1`` of the hexapod's SET_ENABLED_SUBSTATE (ts_mthexapod@v1.8.0 enums.py)."""

    ENABLED_INVALID = 0
    MOVE_POINT_TO_POINT = 1
    STOP = 3


# -- SimpleMockController (generation D, spec §3.10) ------------------------------------------
SIMPLE_CONFIG = Layout(
    "SimpleConfig",
    [("drives_enabled", "bool"), ("min_position", "f64"), ("max_position", "f64"),
     ("max_velocity", "f64")],
    size=25,
)

SIMPLE_TELEMETRY = Layout(
    "SimpleTelemetry",
    [("application_status", "u32"), ("state", "f64"), ("enabled_substate", "f64"),
     ("curr_position", "f64"), ("cmd_position", "f64")],
    size=36,
)

# -- SimpleMockController, generation A (spec §5.7) ---------------------------------------
SIMPLE_CONFIG_A = Layout(
    "SimpleConfigA",
    [("min_position", "f64"), ("max_position", "f64"), ("max_velocity", "f64")],
    size=24,
)

SIMPLE_TELEMETRY_A = Layout(
    "SimpleTelemetryA",
    [("application_status", "u32"), ("state", "f64"), ("enabled_substate", "f64"),
     ("offline_substate", "f64"), ("curr_position", "f64"), ("cmd_position", "f64")],
    size=44,
)

# -- MTRotator (spec §4.1) ---------------------------------------------------------------------
ROTATOR_CONFIG = Layout(
    "MTRotator.Config",
    [(n, "f64") for n in (
        "velocity_limit", "accel_limit", "pos_error_threshold", "upper_pos_limit",
        "lower_pos_limit", "following_error_threshold", "track_success_pos_threshold",
        "tracking_lost_timeout", "emergency_jerk_limit", "emergency_accel_limit",
        "disable_limit_max_time", "max_velocity_limit")]
    + [("drives_enabled", "bool")],
    size=97,
)

ROTATOR_TELEMETRY = Layout(
    "MTRotator.Telemetry",
    [
        ("biss_motor_encoder_axis_a", "u32"), ("biss_motor_encoder_axis_b", "u32"),
        ("biss_linear_encoder_axis_a", "u32"), ("biss_linear_encoder_axis_b", "u32"),
        ("status_word_drive0", "u16"), ("status_word_drive0_axis_b", "u16"),
        ("latching_fault_status_register", "u16"),
        ("latching_fault_status_register_axis_b", "u16"),
        ("input_pin_states", "i32"),
        ("motor_torque_axis_a", "i16"), ("motor_torque_axis_b", "i16"),
        ("copley_fault_status_register", "u32[2]"),
        ("application_status", "u32"),
        ("motor_current", "f64[2]"),
        ("bus_voltage", "f64"),
        ("mjd", "f64"), ("mjd_frac", "f64"),
        *[(n, "f64") for n in (
            "demand_jerk", "demand_accel", "demand_vel", "demand_pos", "track_mode", "state",
            "enabled_substate", "fault_substate",
            "rate_cmd_ch_a", "rate_cmd_ch_b", "rotator_fb", "current_vel_ch_a_fb",
            "current_vel_ch_b_fb", "motor_encoder_ch_a", "motor_encoder_ch_b",
            "linear_encoder_ch_a", "linear_encoder_ch_b", "current_pos", "motor_pos_rad_ch_a",
            "motor_pos_rad_ch_b", "demand_motor_current_axis_a", "demand_motor_current_axis_b",
            "motor_initi_offset_a", "motor_initi_offset_b",
            "flags_initialization_complete", "flags_slew_complete",
            "flags_pt2pt_move_complete", "flags_new_pt2pt_command", "flags_stop_complete",
            "flags_following_error", "flags_move_success", "flags_tracking_success",
            "flags_position_feedback_fault", "flags_tracking_lost",
            "rotator_odometer", "time_sync", "received_command", "set_pos",
            "flags_no_new_track_cmd_error")],
    ],
    size=396,
)

# -- MTRotator, generation A (ts_mtrotator v0.18.0 with ts_hexrotcomm v0.22.0, spec §11) -----
# Transcribed from ``lsst-ts/ts_mtrotator@v0.18.0: python/lsst/ts/mtrotator/structs.py``
# (``Config`` FRAME_ID 0x2, ``Telemetry`` FRAME_ID 0x0; controller ts_rotator_controller 1.2.2).
ROTATOR_CONFIG_A = Layout(
    "MTRotator.ConfigA",
    [(n, "f64") for n in (
        "velocity_limit", "accel_limit", "pos_error_threshold", "upper_pos_limit",
        "lower_pos_limit", "following_error_threshold", "track_success_pos_threshold",
        "tracking_lost_timeout")],
    size=64,
)

ROTATOR_TELEMETRY_A = Layout(
    "MTRotator.TelemetryA",
    [
        ("biss_motor_encoder_axis_a", "u32"), ("biss_motor_encoder_axis_b", "u32"),
        ("biss_linear_encoder_axis_a", "u32"), ("biss_linear_encoder_axis_b", "u32"),
        ("status_word_drive0", "u16"), ("status_word_drive0_axis_b", "u16"),
        ("latching_fault_status_register", "u16"),
        ("latching_fault_status_register_axis_b", "u16"),
        ("input_pin_states", "i32"),
        ("motor_torque_axis_a", "i16"), ("motor_torque_axis_b", "i16"),
        ("copley_fault_status_register", "u32[2]"),
        ("application_status", "u32"),
        *[(n, "f64") for n in (
            "mjd", "mjd_frac",
            "demand_jerk", "demand_accel", "demand_vel", "demand_pos", "track_mode", "state",
            "enabled_substate", "offline_substate", "test_state", "cmd_ch_ab",
            "rate_cmd_ch_a", "rate_cmd_ch_b", "ch_a_fb", "ch_b_fb", "rotator_fb",
            "current_vel_ch_a_fb", "current_vel_ch_b_fb", "motor_encoder_ch_a",
            "motor_encoder_ch_b", "linear_encoder_ch_a", "linear_encoder_ch_b", "current_pos",
            "motor_pos_rad_ch_a", "motor_pos_rad_ch_b", "motor_current_axis_a",
            "motor_current_axis_b", "motor_initi_offset_a", "motor_initi_offset_b",
            "flags_initialization_complete", "flags_slew_complete",
            "flags_pt2pt_move_complete", "flags_new_pt2pt_command", "flags_stop_complete",
            "flags_following_error", "flags_move_success", "flags_tracking_success",
            "flags_position_feedback_fault", "flags_tracking_lost",
            "rotator_odometer", "time_sync", "received_command", "set_pos",
            "flags_no_new_track_cmd_error")],
    ],
    size=404,
)

# -- MTHexapod (spec §4.2) ---------------------------------------------------------------------
HEXAPOD_POS_FILT_VEL = Layout(
    "MTHexapod.PosFiltVel", [("pos", "f64"), ("pos_filt", "f64"), ("vel", "f64")], size=24)

HEXAPOD_CONFIG = Layout(
    "MTHexapod.Config",
    [("acceleration_strut", "f64"), ("vel_limits", "f64[4]"),
     ("max_displacement_strut", "f64"), ("max_velocity_strut", "f64"),
     ("pos_limits", "f64[6]"), ("pivot", "f64[3]"), ("drives_enabled", "bool")],
    size=129,
)

HEXAPOD_TELEMETRY = Layout(
    "MTHexapod.Telemetry",
    [
        ("strut_measured_pos_raw", "i32[6]"), ("status_word", "u16[6]"),
        ("latching_fault_status_register", "u16[6]"),
        ("copley_fault_status_register", "u32[6]"), ("application_status", "u32"),
        ("input_pin_states", "u32[3]"), ("motor_current", "f64[6]"), ("bus_voltage", "f64[3]"),
        ("mjd", "f64"), ("mjd_frac", "f64"), ("dt", "f64"),
        ("strut_commanded_delta_pos_m", "f64[6]"), ("strut_commanded_accel", "f64[6]"),
        ("strut_commanded_final_pos", "f64[6]"), ("command_valid", "f64"), ("state", "f64"),
        ("enabled_substate", "f64"), ("strut_pos_error", "f64[6]"), ("measured_uvw", "f64[3]"),
        ("measured_xyz", "f64[3]"), ("num_iterations", "f64"),
        ("estimated_posfiltvel", HEXAPOD_POS_FILT_VEL, 6), ("commanded_pos", "f64[6]"),
    ],
    size=648,
)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What the link needs to know about one kind of controller."""

    name: str
    config: Layout
    telemetry: Layout
    codes: type[enum.IntEnum]
    #: Gen-A sync pattern written in commands and (as controller) headers (spec §5.3).
    sync_pattern: int
    #: Gen-A frame ids (spec §5.4); gen D always uses FrameId 3 / 2.
    config_frame_id_a: int
    telemetry_frame_id_a: int
    #: Field names in config giving the position range (lower, upper) and the velocity limit.
    lower_limit_field: str
    upper_limit_field: str
    velocity_limit_field: str
    #: Field name of the measured position in telemetry.
    position_field: str
    #: Field name of the commanded/demand position in telemetry.
    demand_field: str
    unit: str = "deg"


SIMPLE = DeviceSpec(
    name="simple",
    config=SIMPLE_CONFIG,
    telemetry=SIMPLE_TELEMETRY,
    codes=SimpleCommandCode,
    sync_pattern=0x1234,
    config_frame_id_a=0x19,
    telemetry_frame_id_a=0x5,
    lower_limit_field="min_position",
    upper_limit_field="max_position",
    velocity_limit_field="max_velocity",
    position_field="curr_position",
    demand_field="cmd_position",
)

#: Generation-A SimpleMockController (v0.22.0): 24-byte config, 44-byte telemetry, frame ids
#: 0x19 / 0x5, codes 1-3.
SIMPLE_A = replace(SIMPLE, config=SIMPLE_CONFIG_A, telemetry=SIMPLE_TELEMETRY_A,
                   codes=SimpleCommandCodeA)

ROTATOR = DeviceSpec(
    name="rotator",
    config=ROTATOR_CONFIG,
    telemetry=ROTATOR_TELEMETRY,
    codes=RotatorCommandCode,
    sync_pattern=0x5555,
    # Preset rotator-2021-09 (spec §5.4): config 0x2, telemetry 0x0.
    config_frame_id_a=0x2,
    telemetry_frame_id_a=0x0,
    lower_limit_field="lower_pos_limit",
    upper_limit_field="upper_pos_limit",
    velocity_limit_field="velocity_limit",
    position_field="current_pos",
    demand_field="demand_pos",
)

#: Generation-A rotator profile: the last real gen-A layouts (ts_mtrotator v0.18.0 with
#: ts_hexrotcomm v0.22.0: Config 64 bytes, frame id 0x2; Telemetry 404 bytes, frame id 0x0;
#: controller ts_rotator_controller 1.2.2), the gen-A command codes (ADR 0043).
ROTATOR_A = replace(ROTATOR, config=ROTATOR_CONFIG_A, telemetry=ROTATOR_TELEMETRY_A,
                    codes=RotatorCommandCodeA)

#: MTHexapod, generation D (ts_mthexapod@v1.8.0 structs.py / enums.py). Positions are six
#: values x, y, z (um), u, v, w (deg); the limit "fields" name the config array that holds
#: them (``pos_limits``: maxXY, minZ, maxZ, maxUV, minW, maxW) and the client-side model
#: (``HexapodController``) reads it as such.
HEXAPOD = DeviceSpec(
    name="hexapod",
    config=HEXAPOD_CONFIG,
    telemetry=HEXAPOD_TELEMETRY,
    codes=HexapodCommandCode,
    sync_pattern=0x5555,
    config_frame_id_a=0x2,
    telemetry_frame_id_a=0x0,
    lower_limit_field="pos_limits",
    upper_limit_field="pos_limits",
    velocity_limit_field="max_velocity_strut",
    position_field="measured_xyz",
    demand_field="commanded_pos",
    unit="um, deg",
)

_BY_GENERATION: dict[tuple[str, Generation], DeviceSpec] = {
    ("simple", Generation.D): SIMPLE,
    ("simple", Generation.A): SIMPLE_A,
    ("rotator", Generation.D): ROTATOR,
    ("rotator", Generation.A): ROTATOR_A,
    ("hexapod", Generation.D): HEXAPOD,
}

DEVICES: dict[str, DeviceSpec] = {"simple": SIMPLE, "rotator": ROTATOR, "hexapod": HEXAPOD}


def device_spec(name: str, generation: Generation | str) -> DeviceSpec:
    """The device profile of ``name`` ("simple", "rotator", "hexapod") for one generation."""
    gen = Generation(generation)
    try:
        return _BY_GENERATION[(name, gen)]
    except KeyError:
        known = sorted({n for n, _ in _BY_GENERATION})
        if name in known:
            raise ValueError(f"device {name!r} exists in generation D only: its generation-A "
                             "structs are not transcribed (docs/hexrotcomm.md)") from None
        raise ValueError(f"unknown device {name!r} (known: {', '.join(known)})") from None

