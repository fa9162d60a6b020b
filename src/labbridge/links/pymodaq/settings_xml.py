"""Settings XML exchanged on connect (``Infos``) and per parameter (``set_info``, ``Info_xml``).

Spec pymodaq.md §4.1: labbridge treats a peer's XML as opaque text and exposes it, and generates
a minimal valid tree for its own clients: ``<settings title="settings" type="group">`` with one
child element per exported setting (``title``, ``type``, ``value`` attributes, the layout the
PyMoDAQ parameter-tree serialiser uses). The PyMoDAQ move server expects a ``units`` child.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def _type_of(value: Any) -> str:
    for t, name in _TYPES.items():
        if type(value) is t:
            return name
    return "str"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def settings_to_xml(settings: dict[str, Any], *, title: str = "settings") -> str:
    """A ``settings`` group with one child per entry (names must be XML names)."""
    root = ET.Element("settings", {"title": title, "type": "group"})
    for name, value in settings.items():
        ET.SubElement(root, name, {"title": name, "type": _type_of(value),
                                   "value": _text(value)})
    return ET.tostring(root, encoding="unicode")


def parameter_to_xml(name: str, value: Any) -> str:
    """One parameter element (what ``set_info`` carries)."""
    el = ET.Element(name, {"title": name, "type": _type_of(value), "value": _text(value)})
    return ET.tostring(el, encoding="unicode")


def xml_values(xml: str) -> dict[str, str]:
    """Every element's ``value`` attribute by tag name (flat; empty when not parseable).

    Used to read a ``set_info`` parameter or a client's ``Infos`` tree; never raises on
    a peer's malformed XML (spec §4.1: XML errors are logged, the connection goes on).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    out: dict[str, str] = {}
    for el in root.iter():
        v = el.get("value")
        if v is not None:
            out[el.tag] = v
    return out
