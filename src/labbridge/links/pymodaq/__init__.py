"""PyMoDAQ TCP/IP remote modules: the main computer's server and the distant computer's client.

See docs/pymodaq.md and spec pymodaq.md. :class:`PyMoDAQServer` exposes connected remote
modules as :class:`RemoteActuator` / :class:`RemoteDetector` devices; :class:`PyMoDAQClient`
serves a local device to a PyMoDAQ-style server.
"""

from labbridge.links.pymodaq.client import PyMoDAQClient
from labbridge.links.pymodaq.server import (
    PyMoDAQServer,
    RemoteActuator,
    RemoteDetector,
    RemoteUnavailable,
)

__all__ = ["PyMoDAQClient", "PyMoDAQServer", "RemoteActuator", "RemoteDetector",
           "RemoteUnavailable"]
