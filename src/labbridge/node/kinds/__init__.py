"""Registration of every device and service kind, one module per family.

Importing this package registers them all. A family adds its module to ``_FAMILIES``.
"""

from __future__ import annotations

import importlib
import logging

_FAMILIES = (
    "labbridge.node.kinds.pychron",
    "labbridge.node.kinds.bus",
    "labbridge.node.kinds.pychron_server",
    "labbridge.node.kinds.acquisition",
    "labbridge.node.kinds.pymodaq",
    "labbridge.node.kinds.hexrotcomm",
    "labbridge.node.kinds.furnace",
    "labbridge.node.kinds.relay",
    "labbridge.node.kinds.qtegra",
    "labbridge.node.kinds.laser",
    "labbridge.node.kinds.web",
)


def load_all() -> None:
    for mod in _FAMILIES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise  # a real import error inside the family module
            logging.getLogger(__name__).warning("device/service family %s is not installed",
                                                mod)
