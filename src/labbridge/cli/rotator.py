"""``labbridge rotator`` and ``labbridge hexapod`` (docs/hexrotcomm.md).

``labbridge rotator HOST:PORT status|enable|move ANGLE|stop|standby``:
generation D (default): connect to the controller at HOST:PORT, run the action, disconnect.
Generation A: listen on HOST:PORT (telemetry) and PORT+1 (commands), wait for the controller to
connect (it retries every 0.1 s), run the action, close.

``labbridge hexapod HOST:PORT status|enable|move X Y Z U V W|stop|standby``: the same for a
hexapod controller (generation D); a position is x, y, z in micrometres and u, v, w in
degrees.

Every action prints one JSON object (the controller's status after the action) on stdout.
Exit codes: 0 done; 1 refused (NO_ACK, local limit check, wrong state); 2 usage; 3 link error.

``--tls-ca CA --tls-cert CERT --tls-key KEY`` (generation D): talk TLS to a labbridge mock
whose node file has a ``tls`` section; CERT's name is the identity the mock's node gives a
role (docs/hexrotcomm.md, "Access and TLS"). A real controller speaks plain TCP only.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

from labbridge.cli.common import parse_hostport, run_async
from labbridge.cli.pychron import tls_context, tls_options
from labbridge.links.hexrotcomm.common import CommandRejected, LinkFault
from labbridge.links.hexrotcomm.controller import (
    HexapodController,
    HexrotController,
    LimitError,
    StateError,
)
from labbridge.protocol.hexrotcomm.devices import device_spec
from labbridge.protocol.hexrotcomm.framing import WireProfile

ACTIONS = ("status", "enable", "move", "stop", "standby")


def _status(ctrl: HexrotController) -> dict[str, Any]:
    out: dict[str, Any] = {"controller": f"{ctrl.host}:{ctrl.port}",
                           "generation": ctrl.generation.value, **ctrl.snapshot(),
                           **ctrl.status_fields()}
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


async def _run(ctrl: HexrotController, action: str, target: Any, wait: bool,
               tolerance: float) -> tuple[int, dict[str, Any]]:
    try:
        if ctrl.generation.value == "A":
            await ctrl.start()
        await ctrl.connect()
        result: dict[str, Any] = {}
        if action == "enable":
            await ctrl.enable()
        elif action == "standby":
            await ctrl.standby()
        elif action == "move":
            assert target is not None
            result["duration"] = await ctrl.move(target, wait=wait, tolerance=tolerance)
            if ctrl.link is not None and wait:
                await ctrl.link.next_telemetry()
        elif action == "stop":
            result["duration"] = await ctrl.stop_motion()
            if wait:
                await ctrl.wait_stationary()
        status = {**_status(ctrl), **result}
        return 0, status
    except (LimitError, StateError, CommandRejected) as exc:
        return 1, {**_status(ctrl), "error": str(exc), "refused": type(exc).__name__}
    except (LinkFault, ConnectionError, TimeoutError) as exc:
        return 3, {**_status(ctrl), "error": str(exc) or type(exc).__name__}
    finally:
        await ctrl.disconnect()


class _Refused(click.ClickException):
    """Printed as ``Error: ...`` on stderr; exit code 1: the controller refused."""

    exit_code = 1


class _LinkError(click.ClickException):
    """Exit code 3: the link to the controller failed."""

    exit_code = 3


def _Failed(message: str, code: int) -> click.ClickException:
    return _Refused(message) if code == 1 else _LinkError(message)


def _finish(ctrl: HexrotController, action: str, target: Any, wait: bool,
            tolerance: float) -> None:
    code, out = run_async(_run(ctrl, action, target, wait, tolerance))
    click.echo(json.dumps(out, sort_keys=True, default=str))
    if code:
        raise _Failed(str(out.get("error", "failed")), code)


# ignore_unknown_options lets a negative ANGLE through (``move -3``).
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("angle", type=float, required=False)
@click.option("--generation", type=click.Choice(("A", "D")), default="D", show_default=True,
              help="D: connect to the controller; A: listen on PORT and PORT+1 for it.")
@click.option("--device", type=click.Choice(("rotator", "simple")), default="rotator",
              show_default=True)
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to connect and to get CONFIG and TELEMETRY.")
@click.option("--enable-delay", type=float, default=1.0, show_default=True,
              help="Pause after ENABLE_DRIVES before SET_STATE ENABLE (gen D).")
@click.option("--move-pause", type=float, default=0.2, show_default=True,
              help="Pause between POSITION_SET and MOVE_POINT_TO_POINT.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="move/stop: wait until the rotator is stationary.")
@click.option("--tolerance", type=float, default=1e-3, show_default=True,
              help="move: arrival tolerance (deg).")
@tls_options
def rotator(target: str, action: str, angle: float | None, generation: str, device: str,
            timeout: float, enable_delay: float, move_pause: float, wait: bool,
            tolerance: float, tls_ca: str | None, tls_cert: str | None,
            tls_key: str | None) -> None:
    """Drive a hexapod/rotator-style controller at TARGET (HOST:PORT)."""
    host, port = parse_hostport(target)
    if action == "move" and angle is None:
        raise click.UsageError("move needs an ANGLE")
    if action != "move" and angle is not None:
        raise click.UsageError(f"{action} takes no ANGLE")
    tls = tls_context(tls_ca, tls_cert, tls_key)
    if tls is not None and generation == "A":
        raise click.UsageError("--tls-* is for generation D (we connect to a labbridge mock)")
    profile = WireProfile.make(device_spec(device, generation), generation)
    ctrl = HexrotController("rotator", profile, host, port, connect_timeout=timeout,
                            config_timeout=timeout, enable_drives_delay=enable_delay,
                            move_pause=move_pause, autoconnect=True, ssl=tls)
    _finish(ctrl, action, angle, wait, tolerance)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("position", type=float, nargs=-1)
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to connect and to get CONFIG and TELEMETRY.")
@click.option("--enable-delay", type=float, default=1.0, show_default=True,
              help="Pause after ENABLE_DRIVES before SET_STATE ENABLE.")
@click.option("--move-pause", type=float, default=0.1, show_default=True,
              help="Pause between POSITION_SET and MOVE_POINT_TO_POINT.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="move/stop: wait until the hexapod is stationary.")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="move: arrival tolerance (um and deg).")
@tls_options
def hexapod(target: str, action: str, position: tuple[float, ...], timeout: float,
            enable_delay: float, move_pause: float, wait: bool, tolerance: float,
            tls_ca: str | None, tls_cert: str | None, tls_key: str | None) -> None:
    """Drive a hexapod controller at TARGET (HOST:PORT), generation D.

    move takes six values: X Y Z (micrometres) U V W (degrees).
    """
    host, port = parse_hostport(target)
    if action == "move" and len(position) != 6:
        raise click.UsageError(f"move needs six values X Y Z U V W, got {len(position)}")
    if action != "move" and position:
        raise click.UsageError(f"{action} takes no position")
    tls = tls_context(tls_ca, tls_cert, tls_key)
    profile = WireProfile.make(device_spec("hexapod", "D"), "D")
    ctrl = HexapodController("hexapod", profile, host, port, connect_timeout=timeout,
                             config_timeout=timeout, enable_drives_delay=enable_delay,
                             move_pause=move_pause, autoconnect=True, ssl=tls)
    _finish(ctrl, action, list(position) if position else None, wait, tolerance)


def register(group: click.Group) -> None:
    group.add_command(rotator)
    group.add_command(hexapod)
