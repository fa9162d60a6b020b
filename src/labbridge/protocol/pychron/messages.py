"""Requests, replies and error codes of the Pychron command channel (spec sections 3.2, 4).

Every exact reply string of the family is produced here and nowhere else:
:func:`render_reply` maps a handler's result to wire text the way the real server does
(``True`` -> ``OK``, ``None`` -> ``No Response``, ``False`` -> ``False``, other values ->
``str``), and :class:`PychronError` renders ``ERROR nnn : message`` from the real code table.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

OK: Final = "OK"
OK_UNCHANGED: Final = "ok"
FALSE: Final = "False"
NO_RESPONSE: Final = "No Response"


class ErrorCode(enum.IntEnum):
    """The real error-code table (``pychron/tx/errors.py``) plus labbridge's 900-903."""

    PYSCRIPT = 1
    FUNC_CALL = 2
    INVALID_COMMAND = 3
    INVALID_ARGUMENTS = 4
    INVALID_VALVE = 5
    INVALID_VALVE_GROUP = 6
    MANAGER_UNAVAILABLE = 7
    DEVICE_CONNECTION = 8
    INVALID_IP = 9
    NO_RESPONSE = 10
    PYCHRON_COMM = 11
    SYSTEM_LOCK = 12
    SECURITY = 13
    VALVE_SOFTWARE_LOCK = 14
    VALVE_ACTUATION = 15
    INVALID_GAUGE = 16
    LOGIC_BOARD_COMM = 101
    ENABLE = 102
    DISABLE = 103
    INVALID_SAMPLE_HOLDER = 104
    LASER_MONITOR = 105
    SETPOINT = 106
    INVALID_MOTOR = 107
    POSITION = 108
    FRAME_LENGTH = 900
    FRAME_HEADER = 901
    FRAME_TIMEOUT = 902
    FRAME_NOT_UTF8 = 903


#: Message templates, verbatim from the real table (including its spelling).
TEMPLATES: Final[dict[ErrorCode, str]] = {
    ErrorCode.PYSCRIPT: "invalid pyscript {} does not exist",
    ErrorCode.FUNC_CALL: "func call problem: err= {} args= {}",
    ErrorCode.INVALID_COMMAND: "invalid command: {}",
    ErrorCode.INVALID_ARGUMENTS: "invalid arguments: {}",
    ErrorCode.INVALID_VALVE: "{} is not a registered valve name",
    ErrorCode.INVALID_VALVE_GROUP: "Invalid valve group - {}",
    ErrorCode.MANAGER_UNAVAILABLE: "manager unavaliable: {}",
    ErrorCode.DEVICE_CONNECTION: "device {} not connected",
    ErrorCode.INVALID_IP: "{} is not a registered ip address",
    ErrorCode.NO_RESPONSE: "no response from device",
    ErrorCode.PYCHRON_COMM: "could not communicate with pychron through {}. socket.error = {}",
    ErrorCode.SYSTEM_LOCK: "Access restricted to {} ({}). You are {}",
    ErrorCode.SECURITY: "Not an approved ip address {}",
    ErrorCode.VALVE_SOFTWARE_LOCK: "Valve {} is software locked",
    ErrorCode.VALVE_ACTUATION: "Valve {} failed to actuate {}",
    ErrorCode.INVALID_GAUGE: "{} {} not available",
    ErrorCode.LOGIC_BOARD_COMM: "Failed communication with logic board",
    ErrorCode.ENABLE: "Laser failed to enable {}",
    ErrorCode.DISABLE: "Laser failed to disable {}",
    ErrorCode.INVALID_SAMPLE_HOLDER: "Invalid sample holder. {}",
    ErrorCode.LASER_MONITOR: "emergency shutdown. {}",
    ErrorCode.SETPOINT: "failed to reach setpoint {}",
    ErrorCode.INVALID_MOTOR: "no motor named {} available",
    ErrorCode.POSITION: "positioning error. {}",
    ErrorCode.FRAME_LENGTH: "{}",
    ErrorCode.FRAME_HEADER: "{}",
    ErrorCode.FRAME_TIMEOUT: "frame timeout",
    ErrorCode.FRAME_NOT_UTF8: "payload is not UTF-8",
}


class PychronError(Exception):
    """An error reply: ``ERROR nnn : message``; raise it from a handler to answer with it.

    ``detail`` (labbridge) is the reason behind the error, appended as ``message (detail)``.
    Only replies whose form has no byte-exact real counterpart carry it (the reply to a JSON
    request, ADR 0140); plain and braced requests keep the real text.
    """

    def __init__(self, code: ErrorCode, *args: object, detail: str = "") -> None:
        self.code = code
        self.args_ = args
        self.detail = detail
        template = TEMPLATES[code]
        # Templates with fewer placeholders than arguments join the extra ones with spaces
        # (``invalid arguments: Open Z``).
        n = template.count("{}")
        if n and len(args) > n:
            head = list(args[: n - 1])
            tail = " ".join(str(a) for a in args[n - 1 :] if str(a) != "")
            args = (*head, tail)
        elif len(args) < n:
            args = (*args, *([""] * (n - len(args))))
        self.message = template.format(*args)
        if detail:
            self.message += f" ({detail})"
        super().__init__(self.text)

    @property
    def text(self) -> str:
        return f"ERROR {int(self.code):03d} : {self.message}"


def error_text(code: ErrorCode, *args: object) -> str:
    return PychronError(code, *args).text


def render_reply(value: Any) -> str:
    """Wire text of a handler result (real ``_prepare_response``)."""
    if value is True:
        return OK
    if value is None:
        return NO_RESPONSE
    if value is False:
        return FALSE
    if isinstance(value, PychronError):
        return value.text
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_COMMAND_RE: Final = re.compile(r"^(?P<command>\w+) ?(?P<args>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request.

    ``command`` is case-sensitive. ``args`` is what the real server hands to a handler: the
    argument text split on ``,`` (one element for no comma). ``arg_text`` is the raw argument
    text (what error 004 quotes). ``data`` holds the whole object of a JSON request.
    """

    command: str
    args: tuple[str, ...] = ()
    arg_text: str = ""
    data: dict[str, Any] | None = field(default=None, compare=False)
    text: str = ""

    @property
    def is_json(self) -> bool:
        return self.data is not None

    def arg(self, key: str = "value", index: int = 0, default: str | None = None) -> str | None:
        """An argument by JSON key, else by position in the text arguments."""
        if self.data is not None:
            value = self.data.get(key)
            if value is None:
                return default
            return value if isinstance(value, str) else json.dumps(value)
        if index < len(self.args):
            return self.args[index]
        return default

    @property
    def single(self) -> str:
        """The argument text as the real server passes one argument ('' when none)."""
        if self.data is not None:
            v = self.data.get("value")
            return "" if v is None else str(v)
        return self.arg_text


class RequestError(ValueError):
    """A request could not be parsed; ``reply`` is the error text to send."""

    def __init__(self, reply: PychronError) -> None:
        super().__init__(reply.text)
        self.reply = reply


def parse_request(text: str) -> Request:
    """Parse request text exactly as the real ``ServiceProtocol`` does (spec 3.2).

    Leading and trailing whitespace are stripped. ``Command a,b`` gives ``args=("a", "b")``;
    a text that is not a command word is tried as JSON with a ``command`` key.
    """
    stripped = text.strip()
    m = _COMMAND_RE.match(stripped)
    if m is not None:
        command = m.group("command")
        # Real rule: drop the first space-separated token, re-join the rest with single
        # spaces, split on ','.
        arg_text = " ".join(stripped.split(" ")[1:])
        args = tuple(arg_text.split(",")) if arg_text else ()
        return Request(command=command, args=args, arg_text=arg_text, text=stripped)
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError):
        raise RequestError(PychronError(ErrorCode.INVALID_COMMAND, stripped)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("command"), str):
        raise RequestError(PychronError(ErrorCode.INVALID_COMMAND, stripped))
    value = obj.get("value")
    arg_text = "" if value is None else str(value)
    return Request(command=obj["command"], args=(arg_text,) if arg_text else (),
                   arg_text=arg_text, data=obj, text=stripped)


def format_request(command: str, *args: object) -> str:
    """Request text: ``Command a,b`` (the real client's form)."""
    if not args:
        return command
    return f"{command} {','.join(str(a) for a in args)}"


def format_json_request(command: str, **fields: Any) -> str:
    """JSON request text: ``{"command": "Open", "value": "A"}``."""
    return json.dumps({"command": command, **fields})


def is_error_reply(text: str) -> bool:
    """True for ``ERROR nnn : ...`` and Qtegra's ``Error: ...`` (case-insensitive)."""
    return text[:5].upper() == "ERROR"


_ERROR_RE: Final = re.compile(r"^ERROR (\d{3}) : (.*)$", re.DOTALL)


def parse_error_reply(text: str) -> tuple[int, str] | None:
    """``(code, message)`` of an ``ERROR nnn : message`` reply, else None."""
    m = _ERROR_RE.match(text)
    return (int(m.group(1)), m.group(2)) if m else None


TRUE_WORDS: Final = frozenset({"true", "t", "yes", "y", "1", "ok", "open"})
FALSE_WORDS: Final = frozenset({"false", "f", "no", "n", "0", "closed"})


def to_bool(text: str) -> bool | None:
    """The real client's ``to_bool``: True/False for known words, None otherwise."""
    t = text.strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in FALSE_WORDS:
        return False
    return None
