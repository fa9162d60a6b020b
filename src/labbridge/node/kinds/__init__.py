"""Registration of every device and service kind, one module per family.

Importing a family module registers its kinds. :data:`DEVICE_FAMILIES` and
:data:`SERVICE_FAMILIES` say which family holds which kind, so a node imports only the families
its file uses (:func:`load_for`): a valve controller does not import aiohttp or the PyMoDAQ
codecs, and the demo's eight nodes start in a fraction of the time. A family lists its kinds
here; tests/node/test_kinds_table.py checks the table against what the modules register.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

_P = "labbridge.node.kinds."

#: Device kind -> family module.
DEVICE_FAMILIES: dict[str, str] = {
    "valve_bank": _P + "pychron",
    "flag": _P + "pychron",
    "gauge_controller": _P + "pychron",
    "furnace": _P + "furnace",
    "laser": _P + "laser",
    "mass_spectrometer": _P + "qtegra",
    "camera": _P + "pymodaq",
    "spectrometer": _P + "pymodaq",
    "stage": _P + "pymodaq",
    "hexrot_controller": _P + "hexrotcomm",
    "hexrot_rotator_mock": _P + "hexrotcomm",
    "hexrot_simple_mock": _P + "hexrotcomm",
    "hexrot_hexapod_mock": _P + "hexrotcomm",
}

#: Service kind -> family module.
SERVICE_FAMILIES: dict[str, str] = {
    "pychron_command_server": _P + "pychron_server",
    "remote_manager": _P + "acquisition",
    "notifier": _P + "bus",
    "dashboard_server": _P + "bus",
    "dashboard_client": _P + "bus",
    "recorder": _P + "bus",
    "relay_front_server": _P + "relay",
    "relay_processor": _P + "relay",
    "qtegra_server": _P + "qtegra",
    "pymodaq_server": _P + "pymodaq",
    "pymodaq_client": _P + "pymodaq",
    "hexrot_mock_controller": _P + "hexrotcomm",
    "web_dashboard": _P + "web",
    "epics_ioc": _P + "epics",
}

FAMILIES: tuple[str, ...] = tuple(sorted(set(DEVICE_FAMILIES.values())
                                         | set(SERVICE_FAMILIES.values())))

_log = logging.getLogger(__name__)
_missing: set[str] = set()


def _load(mod: str) -> None:
    if mod in _missing:
        return
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if exc.name != mod:
            raise  # a real import error inside the family module
        _missing.add(mod)
        _log.warning("device/service family %s is not installed", mod)


def load_for(kind_names: Iterable[str]) -> None:
    """Import the families that hold these device/service kinds (unknown names: none)."""
    for kind in kind_names:
        mod = DEVICE_FAMILIES.get(kind) or SERVICE_FAMILIES.get(kind)
        if mod is not None:
            _load(mod)


def load_all() -> None:
    """Import every family (to list or check every kind)."""
    for mod in FAMILIES:
        _load(mod)
