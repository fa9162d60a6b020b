"""The laser vocabulary (spec pychron.md section 9, ``pychron/tx/protocols/laser.py``).

Arguments are the real server's: text after the command split on ``,`` (``SetXY 1.5,-2``,
``GoToHole 12,True``), or JSON (``{"command": "SetXY", "value": "1.5,-2"}``; ``x``/``y`` keys
also accepted). Moves return ``OK`` at once; ``GetDriveMoving`` says when the stage arrives.
Failures use the laser error codes: 102 enable, 104 sample holder, 107 motor, 108 position.

``Snapshot name,format`` (JSON ``name`` and ``pic_format``) saves the stage camera's picture on
the node and answers the real server's length-prefixed form (``pychron/tx/protocols/laser.py``
``_snapshot``, read back by ``pychron/lasers/laser_managers/pychron_laser_manager.py``
``_convert_snapshot_response``): two uppercase hex digits and the local path, two lowercase hex
digits and the upload path, then the image. The real server puts the image bytes there as
they are, which a text reply cannot carry (Python 3 writes their ``b'...'`` repr); labbridge
sends them base64-encoded (ADR 0192). Paths longer than 255 bytes cannot be announced in two
hex digits and are refused.
"""

from __future__ import annotations

import base64
import binascii
import math

from labbridge.access import Role
from labbridge.devices.laser import Laser, LaserError
from labbridge.links.pychron.dispatch import Caller, CommandSet, command
from labbridge.protocol.pychron.messages import ErrorCode, PychronError, Request

_CODES = {102: ErrorCode.ENABLE, 103: ErrorCode.DISABLE, 104: ErrorCode.INVALID_SAMPLE_HOLDER,
          105: ErrorCode.LASER_MONITOR, 107: ErrorCode.INVALID_MOTOR,
          108: ErrorCode.POSITION}


def _args(req: Request) -> list[str]:
    if req.data is not None:
        value = req.data.get("value")
        if value is None:
            return []
        return [a.strip() for a in str(value).split(",")]
    return [a.strip() for a in req.args]


def _floats(req: Request, n: int) -> list[float]:
    args = _args(req)
    if req.data is not None and n == 2 and "x" in req.data and "y" in req.data:
        args = [str(req.data["x"]), str(req.data["y"])]
    if len(args) < n:
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
    try:
        values = [float(a) for a in args[:n]]
    except ValueError:
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text) from None
    if not all(math.isfinite(v) for v in values):
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
    return values


def _error(exc: LaserError) -> PychronError:
    return PychronError(_CODES.get(exc.code, ErrorCode.POSITION), exc.detail)


def format_snapshot_reply(local_path: str, upload_path: str, image: bytes) -> str:
    """``%02X<local path>%02x<upload path><base64 image>`` (the real reply's layout)."""
    for p in (local_path, upload_path):
        if len(p) > 0xFF:
            raise ValueError(f"a snapshot path of {len(p)} characters cannot be announced in "
                             "two hex digits")
    return (f"{len(local_path):02X}{local_path}{len(upload_path):02x}{upload_path}"
            + base64.b64encode(image).decode("ascii"))


def parse_snapshot_reply(reply: str) -> tuple[str, str, bytes]:
    """(local path, upload path, image bytes) of a ``Snapshot`` reply; ValueError when it is
    not one (too short, bad lengths, an image that is not base64)."""
    try:
        n1 = int(reply[:2], 16)
        local = reply[2:2 + n1]
        n2 = int(reply[2 + n1:4 + n1], 16)
        upload = reply[4 + n1:4 + n1 + n2]
        rest = reply[4 + n1 + n2:]
    except ValueError:
        raise ValueError(f"not a Snapshot reply: {reply[:40]!r}") from None
    if len(local) != n1 or len(upload) != n2:
        raise ValueError(f"truncated Snapshot reply: {reply[:40]!r}")
    try:
        image = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the Snapshot image is not base64") from None
    return local, upload, image


class LaserCommands(CommandSet):
    """Commands of one laser (Fusions CO2 / diode style)."""

    def __init__(self, laser: Laser) -> None:
        self.laser = laser

    @command("Enable")
    async def enable(self, req: Request, caller: Caller) -> bool:
        try:
            await self.laser.enable()
        except LaserError as exc:
            raise _error(exc) from None
        return True

    @command("Disable")
    def disable(self, req: Request, caller: Caller) -> bool:
        self.laser.disable()
        return True

    @command("SetLaserPower")
    def set_laser_power(self, req: Request, caller: Caller) -> bool:
        (p,) = _floats(req, 1)
        try:
            self.laser.set_power(p)
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text) from None
        return True

    @command("SetLaserOutput")
    def set_laser_output(self, req: Request, caller: Caller) -> bool:
        args = _args(req)
        (value,) = _floats(req, 1)
        units = args[1].lower() if len(args) > 1 else "percent"
        if units in ("w", "watts"):
            value = 100.0 * value / self.laser.max_power
        elif units not in ("percent", "%"):
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        try:
            self.laser.set_power(value)
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text) from None
        return True

    @command("ReadLaserPower", idempotent=True)
    def read_laser_power(self, req: Request, caller: Caller) -> float:
        return self.laser.read_power()

    def _move(self, fn: object, *values: float) -> bool:
        try:
            fn(*values)  # type: ignore[operator]
        except LaserError as exc:
            raise _error(exc) from None
        return True

    @command("SetXY")
    def set_xy(self, req: Request, caller: Caller) -> bool:
        x, y = _floats(req, 2)
        return self._move(self.laser.move_xy, x, y)

    @command("SetX")
    def set_x(self, req: Request, caller: Caller) -> bool:
        return self._move(self.laser.move_x, *_floats(req, 1))

    @command("SetY")
    def set_y(self, req: Request, caller: Caller) -> bool:
        return self._move(self.laser.move_y, *_floats(req, 1))

    @command("SetZ")
    def set_z(self, req: Request, caller: Caller) -> bool:
        return self._move(self.laser.move_z, *_floats(req, 1))

    @command("GetPosition", idempotent=True)
    def get_position(self, req: Request, caller: Caller) -> str:
        return ",".join(f"{v:0.5f}" for v in self.laser.position)

    @command("GoToHole")
    def goto_hole(self, req: Request, caller: Caller) -> bool:
        args = _args(req)
        if not args or not args[0]:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        try:
            self.laser.goto_hole(args[0])
        except LaserError as exc:
            raise _error(exc) from None
        return True

    @command("GetDriveMoving", idempotent=True)
    def get_drive_moving(self, req: Request, caller: Caller) -> bool:
        return self.laser.moving

    @command("IsReady", idempotent=True)
    def is_ready(self, req: Request, caller: Caller) -> bool:
        return not self.laser.moving and not self.laser.patterning

    @command("DoPattern")
    def do_pattern(self, req: Request, caller: Caller) -> bool:
        args = _args(req)
        if len(args) < 2 or not args[0]:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        try:
            self.laser.do_pattern(args[0], float(args[1]))
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text) from None
        return True

    @command("IsPatterning", idempotent=True)
    def is_patterning(self, req: Request, caller: Caller) -> bool:
        return self.laser.patterning

    @command("AbortPattern")
    def abort_pattern(self, req: Request, caller: Caller) -> bool:
        self.laser.abort_pattern()
        return True

    @command("Prepare")
    def prepare(self, req: Request, caller: Caller) -> bool:
        return True

    @command("SetBeamDiameter")
    def set_beam_diameter(self, req: Request, caller: Caller) -> bool:
        (self.laser.beam_diameter,) = _floats(req, 1)
        return True

    @command("SetZoom")
    def set_zoom(self, req: Request, caller: Caller) -> bool:
        (self.laser.zoom,) = _floats(req, 1)
        return True

    @command("SetLight")
    def set_light(self, req: Request, caller: Caller) -> bool:
        (self.laser.light,) = _floats(req, 1)
        return True

    @command("Snapshot", role=Role.OPERATOR)
    def take_snapshot(self, req: Request, caller: Caller) -> str | None:
        """Save the stage camera's picture; reply with its path and the image (module
        docstring). No camera: no reply text (``No Response``), as the real server."""
        if req.data is not None:
            name, fmt = req.data.get("name"), req.data.get("pic_format", ".jpg")
        else:
            args = _args(req)
            name, fmt = (args[0] if args else None), (args[1] if len(args) > 1 else ".jpg")
        if not isinstance(name, str) or not name or not isinstance(fmt, str):
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        if fmt not in (".jpg", ".png"):
            fmt = ".jpg"  # as the real server does with any other format
        shot = self.laser.take_snapshot(name, fmt)  # ValueError: ERROR 004
        if shot is None:
            return None
        path, image = shot
        return format_snapshot_reply(path, "", image)

    @command("SetMotor")
    def set_motor(self, req: Request, caller: Caller) -> bool:
        args = _args(req)
        if len(args) < 2:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        if args[0] not in self.laser.motors:
            raise PychronError(ErrorCode.INVALID_MOTOR, args[0])
        try:
            self.laser.motors[args[0]] = float(args[1])
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text) from None
        return True
