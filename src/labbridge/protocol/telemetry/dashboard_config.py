"""The dashboard configuration model: ``setupfiles/dashboard.yaml`` (spec pychron.md §14.2).

Pure code: it takes the already-parsed YAML (a mapping ``{port, devices}`` or a bare list of
devices) and returns frozen dataclasses, or raises :class:`DashboardConfigError` naming the
field (``devices[0].values[1].period``) and, when the loader recorded them (labbridge's
line-tracking YAML loader attaches ``lines``/``line`` attributes), the line.

Defaults and aliases follow the spec table: ``enabled``/``use``, ``func_name``/``func``,
``threshold``/``change_threshold``, ``bindname``/``bind``; a value's ``enabled`` defaults to
false as in Pychron, a device's to true. Conditionals are ``[severity, {teststr, nfail,
script, emails}]`` with severity 10 (warning) or 20 (critical); labbridge also accepts the
words ``warn``/``warning``/``critical`` and the mapping form ``{severity: ..., teststr: ...}``.
"""

from __future__ import annotations

import enum
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.telemetry.expr import ExpressionError, compile_test
from labbridge.protocol.telemetry.legacy import valid_tag

DEFAULT_PORT: Final = 8100
DEFAULT_PERIOD: Final = 60.0
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_THRESHOLD: Final = 1e-20
ON_CHANGE: Final = "on_change"


class Severity(enum.IntEnum):
    """Conditional severities, numbered as in Pychron's ``constants.py``."""

    WARNING = 10
    CRITICAL = 20


class DashboardConfigError(ProtocolError):
    """A dashboard file is wrong; ``field`` and ``line`` say where."""

    kind = "bad_config"

    def __init__(self, message: str, *, field: str = "", line: int | None = None,
                 source: str = "") -> None:
        where = source or "<dashboard>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}", side=Side.OURS, fatal=True)
        self.reason = message
        self.field = field
        self.line = line
        self.source = source


@dataclass(frozen=True, slots=True)
class ConditionalConfig:
    severity: Severity
    teststr: str
    nfail: int = 1
    script: str = ""
    emails: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"severity": int(self.severity), "teststr": self.teststr, "nfail": self.nfail,
                "script": self.script, "emails": self.emails}


@dataclass(frozen=True, slots=True)
class ValueConfig:
    name: str
    tag: str
    func_name: str = "get"
    #: Seconds between samples, or None for ``on_change`` (pushed by the device).
    period: float | None = DEFAULT_PERIOD
    enabled: bool = False
    threshold: float = DEFAULT_THRESHOLD
    units: str = ""
    timeout: float = DEFAULT_TIMEOUT
    record: bool = False
    bindname: str = ""
    conditionals: tuple[ConditionalConfig, ...] = ()

    @property
    def on_change(self) -> bool:
        return self.period is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "func_name": self.func_name,
                "period": ON_CHANGE if self.period is None else self.period,
                "enabled": self.enabled, "threshold": self.threshold, "units": self.units,
                "timeout": self.timeout, "record": self.record, "bindname": self.bindname,
                "conditionals": [c.to_json() for c in self.conditionals]}


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str
    device: str
    enabled: bool = True
    values: tuple[ValueConfig, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "enabled": self.enabled,
                "values": [v.to_json() for v in self.values]}


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    port: int = DEFAULT_PORT
    devices: tuple[DeviceConfig, ...] = ()
    source_path: str = ""
    #: Warnings found while reading (invalid values skipped, as Pychron skips them).
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The ``config`` object of the ``config_json`` reply (§14.1)."""
        return {"source_path": self.source_path, "port": self.port,
                "devices": [d.to_json() for d in self.devices]}

    def values(self) -> list[tuple[DeviceConfig, ValueConfig]]:
        return [(d, v) for d in self.devices for v in d.values]


# -- parsing ----------------------------------------------------------------------------------
class _Reader:
    """Typed access to one mapping of the file, with aliases and locations."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        self.data = data
        self.path = path
        self.source = source
        self.lines: dict[str, int] = dict(getattr(data, "lines", {}) or {})
        self.line: int | None = getattr(data, "line", None)

    def error(self, key: str | None, msg: str) -> DashboardConfigError:
        fld = f"{self.path}.{key}" if (key and self.path) else (key or self.path)
        line = self.lines.get(key, self.line) if key else self.line
        return DashboardConfigError(msg, field=fld, line=line, source=self.source)

    def key(self, *names: str) -> str | None:
        for n in names:
            if n in self.data and self.data[n] is not None:
                return n
        return None

    def text(self, *names: str, default: str | None = None) -> str:
        k = self.key(*names)
        if k is None:
            if default is None:
                raise self.error(names[0], "required field is missing")
            return default
        v = self.data[k]
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(k, f"expected a string, got {v!r}")
        return str(v).strip()

    def boolean(self, *names: str, default: bool) -> bool:
        k = self.key(*names)
        if k is None:
            return default
        v = self.data[k]
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "t", "on"):
            return True
        if isinstance(v, str) and v.strip().lower() in ("false", "no", "0", "f", "off"):
            return False
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise self.error(k, f"expected true or false, got {v!r}")

    def number(self, *names: str, default: float, positive: bool = False) -> float:
        k = self.key(*names)
        if k is None:
            return default
        v = self.data[k]
        try:
            if isinstance(v, bool):
                raise ValueError
            f = float(v)
        except (TypeError, ValueError):
            raise self.error(k, f"expected a number, got {v!r}") from None
        if not math.isfinite(f) or (positive and f <= 0) or f < 0:
            raise self.error(k, f"must be a {'positive' if positive else 'non-negative'} "
                                f"number, got {v!r}")
        return f


def _parse_conditional(item: Any, path: str, source: str, parent: _Reader) -> ConditionalConfig:
    sev_raw: Any
    body: Any
    if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], Mapping):
        sev_raw, body = item
    elif isinstance(item, Mapping) and "severity" in item:
        sev_raw, body = item["severity"], item
    else:
        raise DashboardConfigError(
            "a conditional is [severity, {teststr: ..., nfail: ...}]", field=path,
            line=parent.line, source=source)
    r = _Reader(body, path, source)
    words = {"warn": Severity.WARNING, "warning": Severity.WARNING,
             "critical": Severity.CRITICAL}
    if isinstance(sev_raw, str) and sev_raw.strip().lower() in words:
        sev = words[sev_raw.strip().lower()]
    elif isinstance(sev_raw, int) and not isinstance(sev_raw, bool) and sev_raw in (10, 20):
        sev = Severity(sev_raw)
    else:
        raise r.error("severity", f"severity must be 10 (warning) or 20 (critical), "
                                  f"got {sev_raw!r}")
    test = r.text("teststr", "test")
    try:
        compile_test(test)
    except ExpressionError as exc:
        raise r.error("teststr", exc.message) from None
    nfail = r.number("nfail", default=1)
    if nfail != int(nfail) or nfail < 1:
        raise r.error("nfail", f"nfail must be a whole number >= 1, got {nfail!r}")
    return ConditionalConfig(sev, test, int(nfail), r.text("script", default=""),
                             r.text("emails", default=""))


def _parse_value(vr: _Reader, dev_name: str) -> ValueConfig:
    name = vr.text("name")
    tag = vr.text("tag", default=f"<{dev_name},{name}>")
    if not valid_tag(tag):
        raise vr.error("tag", f"a tag is one word without whitespace, or <...> without "
                              f"line breaks: {tag!r}")
    k = vr.key("period")
    period: float | None
    if k is not None and isinstance(vr.data[k], str) and vr.data[k].strip() == ON_CHANGE:
        period = None
    else:
        period = vr.number("period", default=DEFAULT_PERIOD, positive=True)
    conds_raw = vr.data.get("conditionals") or []
    if not isinstance(conds_raw, list):
        raise vr.error("conditionals", "expected a list")
    conds = tuple(_parse_conditional(c, f"{vr.path}.conditionals[{i}]", vr.source, vr)
                  for i, c in enumerate(conds_raw))
    return ValueConfig(
        name=name, tag=tag, func_name=vr.text("func_name", "func", default="get"),
        period=period, enabled=vr.boolean("enabled", default=False),
        threshold=vr.number("threshold", "change_threshold", default=DEFAULT_THRESHOLD),
        units=vr.text("units", default=""),
        timeout=vr.number("timeout", default=DEFAULT_TIMEOUT),
        record=vr.boolean("record", default=False),
        bindname=vr.text("bindname", "bind", default=""), conditionals=conds)


_DEVICE_KEYS = frozenset({"name", "device", "enabled", "use", "values"})
_VALUE_KEYS = frozenset({"name", "tag", "func_name", "func", "period", "enabled", "threshold",
                         "change_threshold", "units", "timeout", "record", "bindname", "bind",
                         "conditionals"})


def parse_dashboard_config(data: Any, source: str = "") -> DashboardConfig:
    """Validate parsed YAML into a :class:`DashboardConfig`.

    Strictness (ADR 0034): unknown keys, a missing ``name``/``device``, bad types and unsafe
    conditional tests are errors (a typo must not silently disable an alarm); duplicate tags
    are errors (tags are subscription keys).
    """
    if isinstance(data, list):
        root: Mapping[str, Any] = {"devices": data}
        root_line = getattr(data, "line", None)
    elif isinstance(data, Mapping):
        root = data
        root_line = getattr(data, "line", None)
    else:
        raise DashboardConfigError("a dashboard file is a mapping {port, devices} or a list "
                                   "of devices", source=source, line=1)
    rr = _Reader(root, "", source)
    rr.line = root_line
    unknown = set(root) - {"port", "devices"}
    if unknown:
        raise rr.error(sorted(unknown)[0], "unknown field")
    port = rr.number("port", default=DEFAULT_PORT)
    if port != int(port) or not 0 <= port <= 65534:
        raise rr.error("port", f"port must be 0..65534 (REP listens on port + 1), got {port!r}")
    devs_raw = root.get("devices")
    if not isinstance(devs_raw, list) or not devs_raw:
        raise rr.error("devices", "a dashboard needs a non-empty list of devices")
    devices: list[DeviceConfig] = []
    tags: dict[str, str] = {}
    dlines = list(getattr(devs_raw, "lines", []) or [])
    for i, d in enumerate(devs_raw):
        dpath = f"devices[{i}]"
        if not isinstance(d, Mapping):
            raise DashboardConfigError("expected a mapping", field=dpath, source=source,
                                       line=dlines[i] if i < len(dlines) else None)
        dr = _Reader(d, dpath, source)
        extra = set(d) - _DEVICE_KEYS
        if extra:
            raise dr.error(sorted(extra)[0], "unknown field")
        dname = dr.text("name")
        hw = dr.text("device")
        vals_raw = d.get("values")
        if not isinstance(vals_raw, list) or not vals_raw:
            raise dr.error("values", "a device needs a non-empty list of values")
        vlines = list(getattr(vals_raw, "lines", []) or [])
        values = []
        for j, v in enumerate(vals_raw):
            vpath = f"{dpath}.values[{j}]"
            if not isinstance(v, Mapping):
                raise DashboardConfigError("expected a mapping", field=vpath, source=source,
                                           line=vlines[j] if j < len(vlines) else None)
            vr = _Reader(v, vpath, source)
            extra = set(v) - _VALUE_KEYS
            if extra:
                raise vr.error(sorted(extra)[0], "unknown field")
            val = _parse_value(vr, dname)
            if val.tag in tags:
                raise vr.error("tag", f"duplicate tag {val.tag!r} (also at {tags[val.tag]})")
            tags[val.tag] = vpath
            values.append(val)
        devices.append(DeviceConfig(dname, hw, dr.boolean("enabled", "use", default=True),
                                    tuple(values)))
    return DashboardConfig(int(port), tuple(devices), source)


# -- dashboard.xml ----------------------------------------------------------------------------
#: dashboard.xml is a few kilobytes; anything larger is refused before parsing.
MAX_XML = 1 << 20
_XML_VALUE_TAGS = {"func": "func_name", "period": "period", "enabled": "enabled",
                   "record": "record", "timeout": "timeout",
                   "change_threshold": "change_threshold", "threshold": "threshold",
                   "units": "units", "bind": "bindname", "tag": "tag"}


def parse_dashboard_xml(text: str, source: str = "") -> DashboardConfig:
    """Read Pychron's ``setupfiles/dashboard.xml`` (spec §14.2) into the same model.

    Shape: ``<port>``, then ``<device>Display<name>hw</name><use>true</use>
    <value>name<func/><period/>...<conditionals><warn>test<nfail/></warn>
    <critical>test<nfail/><script/></critical></conditionals></value></device>``.
    Document type declarations are refused (no entity expansion).
    """
    if len(text) > MAX_XML:
        raise DashboardConfigError(f"file larger than {MAX_XML} bytes", source=source)
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise DashboardConfigError("DOCTYPE/ENTITY declarations are not allowed",
                                   source=source)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DashboardConfigError(f"XML syntax error: {exc}", source=source,
                                   line=exc.position[0]) from None

    def head(el: ET.Element) -> str:
        return (el.text or "").strip()

    data: dict[str, Any] = {}
    port = root.find("port")
    if port is not None:
        data["port"] = head(port)
    devices: list[dict[str, Any]] = []
    for d in root.iter("device"):
        dev: dict[str, Any] = {"name": head(d)}
        hw = d.find("name")
        if hw is not None:
            dev["device"] = head(hw)
        use = d.find("use")
        if use is not None:
            dev["enabled"] = head(use)
        values = []
        for v in d.findall("value"):
            val: dict[str, Any] = {"name": head(v)}
            for tag, key in _XML_VALUE_TAGS.items():
                el = v.find(tag)
                if el is not None and head(el):
                    val[key] = head(el)
                elif el is not None and tag == "record":  # a bare <record/> switches it on
                    val[key] = True
            conds = []
            c = v.find("conditionals")
            if c is not None:
                for sev_tag, sev in (("warn", 10), ("critical", 20)):
                    for ce in c.findall(sev_tag):
                        body: dict[str, Any] = {"teststr": head(ce)}
                        for k in ("nfail", "script", "emails"):
                            el = ce.find(k)
                            if el is not None and head(el):
                                body[k] = head(el)
                        conds.append([sev, body])
            if conds:
                val["conditionals"] = conds
            values.append(val)
        dev["values"] = values
        devices.append(dev)
    data["devices"] = devices
    return parse_dashboard_config(data, source)
