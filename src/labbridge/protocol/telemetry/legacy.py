"""The legacy single-string bus forms (spec pychron.md §13, §14.1).

Real Pychron peers publish and read single-frame strings whose first word is the tag that
subscribers filter on (ZeroMQ prefix match), followed by one space and the payload:

=====================================  ================================================
form                                   produced for
=====================================  ================================================
``<tag> <payload>``                    any notification (``RunAdded <uuid>``,
                                       ``ConsoleMessage <text>``)
``dashboard {json}``                   dashboard events; ``json.dumps(sort_keys=True)``
                                       with the *default* separators, as Pychron does
``<Dev,val> 12.5``                     dashboard value updates, tag ``<Device,value>``
``error <message>``                    dashboard critical conditions
``pychron {json}``                     labbridge valve/heartbeat events [lb]; compact
                                       key-sorted JSON
=====================================  ================================================

These functions are the only place those strings are built or parsed; the bus, the
dashboard server and the recorder call them (ADR 0032).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.telemetry.envelope import Buffer, dumps_compact

#: Largest legacy line we accept from a peer (ZeroMQ frames are unbounded).
MAX_LEGACY: Final = 1 << 20

DASHBOARD_TAG: Final = "dashboard"
PYCHRON_TAG: Final = "pychron"
ERROR_TAG: Final = "error"
#: Tags whose payload is a JSON object.
JSON_TAGS: Final = frozenset({DASHBOARD_TAG, PYCHRON_TAG})


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """A parsed legacy line: its tag, the payload text, and the JSON object for JSON tags."""

    tag: str
    text: str
    event: dict[str, Any] | None = None


def valid_tag(tag: str) -> bool:
    """A tag is one word, or a bracketed dashboard tag ``<Display Name,value>`` (Pychron
    builds those from display names, which may contain spaces): ``<`` ... ``>`` with no other
    ``>`` and no line breaks inside."""
    if not tag or "\n" in tag or "\r" in tag:
        return False
    if tag.startswith("<") and tag.endswith(">") and len(tag) > 2:
        return ">" not in tag[1:-1] and tag == tag.strip()
    return not any(c.isspace() for c in tag)


def line(tag: str, payload: str) -> bytes:
    """``<tag> <payload>`` as UTF-8 (see :func:`valid_tag`)."""
    if not valid_tag(tag):
        raise ProtocolError(f"a legacy tag is one word or <...>: {tag!r}", side=Side.OURS,
                            kind="bad_topic")
    return f"{tag} {payload}".encode()


def dashboard_line(event: dict[str, Any]) -> bytes:
    """``dashboard {json}`` with Python's default separators and sorted keys (§14.1)."""
    return (DASHBOARD_TAG + " " + json.dumps(event, sort_keys=True)).encode("utf-8")


def pychron_line(event: dict[str, Any]) -> bytes:
    """``pychron {json}``: compact, key-sorted JSON with ``kind`` and ``ts`` (§13) [lb]."""
    if "kind" not in event or "ts" not in event:
        raise ProtocolError("a pychron event needs kind and ts", side=Side.OURS,
                            kind="bad_value")
    return PYCHRON_TAG.encode() + b" " + dumps_compact(event)


def format_value(value: Any) -> str:
    """How a value is written after its tag: Python ``str`` of numbers (``12.5``)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | int | str):
        return str(value)
    return dumps_compact(value).decode("utf-8")


def value_line(tag: str, value: Any) -> bytes:
    """``<Dev,val> 12.5``."""
    return line(tag, format_value(value))


def parse(frame: Buffer) -> LegacyMessage:
    """Split a legacy line at the first space (after the ``>`` of a bracketed tag); decode
    JSON for ``dashboard``/``pychron``.

    A line without a space is a tag with an empty payload. The payload is stripped (as the
    real subscriber does). Raises :class:`ProtocolError` for non-UTF-8, oversize lines and
    bad JSON under a JSON tag.
    """
    mv = memoryview(frame)
    if len(mv) > MAX_LEGACY:
        raise ProtocolError(f"legacy line of {len(mv)} bytes exceeds {MAX_LEGACY}",
                            kind="too_large")
    try:
        text = bytes(mv).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("legacy line is not UTF-8", kind="bad_payload") from None
    if text.startswith("<") and ">" in text:
        # bracketed dashboard tag, which may contain spaces: ``<Bone Gauge,pressure> 1.5``
        end = text.index(">") + 1
        tag, rest = text[:end], text[end:].strip()
    else:
        tag, _, rest = text.partition(" ")
        rest = rest.strip()
    if not tag:
        raise ProtocolError("legacy line starts with a space (no tag)", kind="bad_topic")
    event: dict[str, Any] | None = None
    if tag in JSON_TAGS:
        try:
            obj = json.loads(rest)
        except (ValueError, RecursionError) as exc:  # RecursionError: b"[" * 100000
            raise ProtocolError(f"{tag} payload is not JSON: {type(exc).__name__}: {exc}",
                                kind="bad_payload") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"{tag} payload must be a JSON object", kind="bad_payload")
        event = obj
    return LegacyMessage(tag, rest, event)


def parse_number(text: str) -> float | None:
    """The numeric value of a ``<tag> <value>`` line, or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None
