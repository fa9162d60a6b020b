"""What a service listens on or connects to (ready files, ``labbridge ports``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening or connecting socket of a service."""

    service: str
    protocol: str  # "tcp", "udp", "unix", "zmq-pub", "zmq-rep", "zmq-sub", "http", ...
    host: str | None = None
    port: int | None = None
    path: str | None = None
    role: str = "listen"  # "listen" or "connect"
    purpose: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}
