"""Valve words and their parsers (spec pychron.md section 6, vectors ``words``).

Server side: :func:`state_word` / :func:`owners_word` / :func:`version1_word` build the reply
bodies and append the CRC16 suffix. Client side: :func:`parse_state_word` and
:func:`parse_owners_word` verify the suffix first (the real client does not, defect 11) and
accept every form a real server has emitted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from labbridge.protocol.pychron.crc import append_crc16, split_crc16


def state_word(flags: Iterable[tuple[str, bool]]) -> str:
    """``A0,B1,C0`` + CRC16: one ``<name><0|1>`` per valve in valves-file order."""
    return append_crc16(",".join(f"{name}{1 if on else 0}" for name, on in flags))


def owners_word(owners: Sequence[tuple[str, str]]) -> str:
    """``GetValveOwners`` reply: valves grouped by owner, groups sorted by owner string.

    The free group (owner ``""``) sorts first and has no prefix; an owned group is prefixed
    ``<owner>-``. Within a group valves keep the valves-file order (vector ``words.owners``).
    """
    groups: dict[str, list[str]] = {}
    for name, owner in owners:
        groups.setdefault(owner, []).append(name)
    parts = []
    for owner in sorted(groups):
        names = ",".join(groups[owner])
        parts.append(f"{owner}-{names}" if owner else names)
    return append_crc16(":".join(parts))


def version1_word(flags: Sequence[tuple[str, bool]]) -> str:
    """``GetStateWord`` / ``GetLockWord`` as the real server emits them (vector
    ``state_word_version1_as_emitted``): the key list holds only the last key (a real
    defect, kept for byte compatibility), then ``:``, the uppercase hex bitmask with the first
    valve as the most significant bit, then CRC16."""
    if not flags:
        return append_crc16(":0")
    word = 0
    for _, on in flags:
        word = (word << 1) | (1 if on else 0)
    last = flags[-1][0]
    if len(last) > 1 and any(ch.isdigit() for name, _ in flags for ch in name):
        last = f"<{last}>"
    return append_crc16(f"{last}:{word:X}")


def checksum_keys(arg_text: str, known: Mapping[str, object] | Iterable[str]) -> list[str]:
    """Keys of ``GetStateChecksum <arg_text>``.

    Comma-separated keys are split. A single argument without a comma is one key when that key
    is registered; otherwise it is iterated character by character as the real server does
    (vector ``GetStateChecksum AB`` == ``A,B``), so single-letter banks stay compatible.
    """
    if not arg_text:
        return []
    if "," in arg_text:
        return arg_text.split(",")
    known_set = set(known)
    if arg_text in known_set:
        return [arg_text]
    return list(arg_text)


class WordError(ValueError):
    """A word could not be parsed."""


_BITS_RE: Final = re.compile(r"^(?P<keys>.*)[|:](?P<hex>[0-9A-Fa-f]+)$", re.DOTALL)


def _split_keys(text: str) -> list[str]:
    keys: list[str] = []
    for part in text.split(","):
        if part.startswith("<") and part.endswith(">"):
            part = part[1:-1]
        keys.append(part)
    return keys


def parse_state_word(word: str, *, check_crc: bool = True) -> dict[str, bool]:
    """Parse a state or lock word into ``{name: flag}`` (insertion order = word order).

    Accepted bodies (real client ``_parse_word``): comma ``A0,B1,C0``; bits ``A,B,<EA>|5``
    (last key = least significant bit; ``:`` accepted too); packed pairs ``A0B1C0``.
    """
    body = split_crc16(word) if check_crc else word
    if body == "":
        return {}
    m = _BITS_RE.match(body)
    if m is not None and ("|" in body or ":" in body):
        keys = _split_keys(m.group("keys"))
        value = int(m.group("hex"), 16)
        n = len(keys)
        return {k: bool((value >> (n - 1 - i)) & 1) for i, k in enumerate(keys)}
    out: dict[str, bool] = {}
    if "," in body or len(body) == 2:
        for packet in body.split(","):
            if len(packet) < 2 or packet[-1] not in "01":
                raise WordError(f"malformed word entry {packet!r}")
            out[packet[:-1]] = packet[-1] == "1"
        return out
    if len(body) % 2:
        raise WordError(f"malformed packed word {body!r}")
    for i in range(0, len(body), 2):
        name, flag = body[i], body[i + 1]
        if flag not in "01":
            raise WordError(f"malformed packed word {body!r}")
        out[name] = flag == "1"
    return out


def parse_owners_word(word: str, *, check_crc: bool = True) -> dict[str, str]:
    """Parse ``GetValveOwners`` into ``{name: owner}`` (``""`` = free), any group order."""
    body = split_crc16(word) if check_crc else word
    out: dict[str, str] = {}
    if not body:
        return out
    for group in body.split(":"):
        owner, sep, names = group.rpartition("-")
        if not sep:
            owner, names = "", group
        for name in names.split(","):
            if name:
                out[name] = owner
    return out
