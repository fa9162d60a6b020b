"""Drive any sans-I/O framer with chunks and collect what it yields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from labbridge.protocol.base import NEED_DATA, ProtocolError


def drain(framer: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            ev = framer.next_event()
        except ProtocolError as exc:
            out.append(exc)
            continue
        if ev is NEED_DATA:
            return out
        out.append(ev)


def feed(framer: Any, chunks: Iterable[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        out.extend(drain(framer))
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]
