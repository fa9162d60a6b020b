"""PyMoDAQ settings XML: ``Infos``, ``Info_xml`` and ``set_info`` payloads (spec pymodaq.md §4.1,
§6, §13), read and written in the format of the real parameter-tree serialiser.

Real format (pymodaq_gui ``parameter/ioxml.py``, releases 5.0 to 5.1 that served the TCP/IP
modules, and unchanged in this respect in 5.3): one element per parameter, named after the
parameter; the **value is the element text**; attributes ``type``, ``title``, ``visible``,
``removable``, ``readonly`` (in that order, flags ``"1"``/``"0"``) and a few type-specific ones
(``limits``, ``show_pb``, ``label``...); a group holds its children and no text. The document is
``ElementTree.tostring`` output (ASCII, characters outside ASCII as character references, an
empty value as a self-closing element)::

    <move_settings type="group" title="Actuator Settings:" visible="1" removable="0"
                   readonly="0"><units type="str" title="Units:" visible="1" removable="0"
                   readonly="1">mm</units><bounds type="group" ...><is_bounds type="bool"
                   ...>0</is_bounds></bounds></move_settings>

Value text by type (``add_text_to_elt`` / ``set_txt_from_elt``): ``bool`` and ``led`` types
``1``/``0``; ``int`` and ``float`` ``str(value)``; ``list`` ``str('x')`` / ``int(3)`` /
``float(1.5)``; anything else the text itself. The real reader ``eval``s some of these texts;
this one never evaluates: it parses those few forms and literals with :func:`ast.literal_eval`.

labbridge before 2026-12 wrote the value into a ``value`` attribute; such documents are still
read (:attr:`ParsedSettings.legacy` says so, callers log it) and never written.

A peer's XML is bounded (:data:`MAX_XML` bytes, :data:`MAX_DEPTH` levels,
:data:`MAX_ELEMENTS` elements) and may not contain a DTD (no entity expansion).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: Largest settings document accepted from a peer (real trees are a few kB).
MAX_XML: Final = 1024 * 1024
#: Deepest nesting of groups accepted.
MAX_DEPTH: Final = 32
#: Most elements accepted in one document.
MAX_ELEMENTS: Final = 10_000
#: Texts longer than this are kept as text, never parsed as literals.
_MAX_LITERAL = 64 * 1024

#: Root element and title of the tree a client sends in ``Infos``: the real client serialises
#: its ``move_settings`` / ``detector_settings`` group (pymodaq ``control_modules/daq_move.py``
#: and ``daq_viewer.py``: ``connect_tcp_ip(params_state=self.settings.child(...))``).
ACTUATOR_ROOT: Final = ("move_settings", "Actuator Settings:")
DETECTOR_ROOT: Final = ("detector_settings", "Detector Settings")

_CALL_RE = re.compile(r"(str|int|float)\((.*)\)", re.DOTALL)
_DECLARATION = re.compile(r"<!(?!\[CDATA\[|--)")


class SettingsXmlError(ValueError):
    """A settings document that cannot be read (malformed, too large, a DTD...)."""


@dataclass(slots=True)
class Param:
    """One parameter element: name (the tag), type, title, value and children."""

    name: str
    type: str = "str"
    title: str = ""
    value: Any = None
    children: list[Param] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        return "group" in self.type or bool(self.children)

    def leaves(self, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Param]]:
        """(path below this element, leaf) for every non-group descendant, in document order."""
        for child in self.children:
            path = (*prefix, child.name)
            if child.is_group:
                yield from child.leaves(path)
            else:
                yield path, child


@dataclass(slots=True)
class ParsedSettings:
    """A parsed document: its root element and whether it used the old ``value=`` form."""

    root: Param
    legacy: bool = False

    def values(self) -> dict[str, Any]:
        """Leaf values keyed by their path below the root joined with ``/`` (``units``,
        ``bounds/is_bounds``). A root without children is itself the one value (what
        ``Info_xml`` and ``set_info`` carry), keyed by its name."""
        if not self.root.children and not self.root.is_group:
            return {self.root.name: self.root.value}
        return {"/".join(path): leaf.value for path, leaf in self.root.leaves()}


# --- reading ---------------------------------------------------------------------------------

def _flag(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    try:
        return bool(int(text))
    except ValueError:
        return default


def _literal(text: str) -> Any:
    """The value of a ``list``-type text without ``eval`` (``str('a')``, ``int(3)``, literals)."""
    if len(text) > _MAX_LITERAL:
        return text
    try:
        m = _CALL_RE.fullmatch(text.strip())
        if m is not None:
            inner = ast.literal_eval(m.group(2)) if m.group(2).strip() else ""
            if m.group(1) == "str":
                return str(inner)
            return int(inner) if m.group(1) == "int" else float(inner)
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_value(ptype: str, text: str | None) -> Any:
    """The typed value of an element text, as the real reader types it (``set_txt_from_elt``),
    without evaluating anything. No text: ``''`` for a ``str`` parameter, else None."""
    if text is None:
        return "" if ptype == "str" else None
    try:
        if ptype in ("float", "slide"):
            return float(text)
        if ptype == "int":
            return int(float(text))
    except (ValueError, OverflowError):
        return text
    if "bool" in ptype or "led" in ptype:
        return bool(int(text)) if text in ("0", "1") else text
    if ptype in ("list", "action", "table", "itemselect"):
        return _literal(text)
    return text


def parse_settings(xml: str | bytes) -> ParsedSettings:
    """Parse a settings document (both the real text form and the old ``value=`` form).

    Raises :class:`SettingsXmlError` for anything that is not a well-formed, bounded settings
    document."""
    if len(xml) > MAX_XML:
        raise SettingsXmlError(f"settings XML of {len(xml)} bytes exceeds {MAX_XML}")
    body = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else xml
    if _DECLARATION.search(body):
        # DTDs (entity expansion) never appear in the real format: refuse any declaration
        # other than a comment or a CDATA section.
        raise SettingsXmlError("settings XML with a DTD or declaration is refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SettingsXmlError(f"malformed settings XML: {exc}") from None
    count = 0
    legacy = False

    def walk(el: ET.Element, depth: int) -> Param:
        nonlocal count, legacy
        count += 1
        if count > MAX_ELEMENTS:
            raise SettingsXmlError(f"settings XML with more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise SettingsXmlError(f"settings XML nested deeper than {MAX_DEPTH}")
        ptype = el.get("type") or ("group" if len(el) else "str")
        title = el.get("title")
        p = Param(name=el.tag, type=ptype,
                  title=el.tag if title in (None, "None") else str(title),
                  attrs=dict(el.attrib))
        if len(el):
            p.children = [walk(child, depth + 1) for child in el]
        text = el.text
        if text is not None and not text.strip() and len(el):
            text = None  # whitespace between children of a pretty-printed group
        if text is None and "value" in el.attrib:
            legacy = True
            text = el.get("value")
        if not p.is_group:
            p.value = parse_value(ptype, text)
        return p

    return ParsedSettings(walk(root, 0), legacy)


# --- writing ---------------------------------------------------------------------------------

def _type_and_text(value: Any) -> tuple[str, str | None]:
    """Parameter type and element text for a Python value (``add_text_to_elt``)."""
    if isinstance(value, bool):
        return "bool", "1" if value else "0"
    if isinstance(value, int):
        return "int", str(value)
    if isinstance(value, float):
        return "float", str(value)
    text = "" if value is None else str(value)
    return "str", text or None


def _element(name: str, value: Any, title: str | None, readonly: bool,
             visible: bool = True) -> ET.Element:
    if isinstance(value, Mapping):
        el = ET.Element(name, _attrs("group", title or name, readonly, visible))
        for k, v in value.items():
            el.append(_element(str(k), v, None, readonly))
        return el
    ptype, text = _type_and_text(value)
    el = ET.Element(name, _attrs(ptype, title or name, readonly, visible))
    el.text = text
    return el


def _attrs(ptype: str, title: str, readonly: bool, visible: bool = True) -> dict[str, str]:
    # dict_from_param's order: type, title, visible, removable, readonly.
    return {"type": ptype, "title": title, "visible": "1" if visible else "0",
            "removable": "0", "readonly": "1" if readonly else "0"}


def _tostring(el: ET.Element) -> str:
    # ET.tostring's default (us-ascii, character references), as the real writer produces.
    return ET.tostring(el).decode("ascii")


def settings_to_xml(settings: Mapping[str, Any], *, root: tuple[str, str] = ACTUATOR_ROOT,
                    titles: Mapping[str, str] | None = None) -> str:
    """The ``Infos`` document of a settings mapping: a group ``root`` (tag, title) with one
    element per entry (a nested mapping becomes a group). Names must be XML names."""
    el = ET.Element(root[0], _attrs("group", root[1], False))
    for name, value in settings.items():
        el.append(_element(name, value, (titles or {}).get(name), False))
    return _tostring(el)


def parameter_to_xml(name: str, value: Any, *, title: str | None = None,
                     readonly: bool = False, visible: bool = True,
                     extra: Mapping[str, str] | None = None) -> str:
    """One parameter element (what ``set_info`` and ``Info_xml`` carry). ``extra`` attributes
    follow the standard ones: a real server's ``set_info`` has ``show_pb="0"``, because the
    parameter it writes was itself restored from XML (``elt_to_dict`` adds that option)."""
    el = _element(name, value, title, readonly, visible)
    for k, v in (extra or {}).items():
        el.set(k, v)
    return _tostring(el)
