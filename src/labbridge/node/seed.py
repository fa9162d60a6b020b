"""The seed's own configuration files, read as they are (seed 002, spec pychron.md section 16).

* ``initialization.xml`` -- which plugins each Pychron node enables;
* device YAML files -- how the acquisition computer reaches a remote node, in the seed's flat
  shape (``name``, ``klass``, ``host``, ``port``, ``timeout``) or the real
  ``General``/``Communications`` shape;
* the command-server YAML -- ``port`` and ``host``.

Every error names the file, the line and the field.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from labbridge.node.config import ConfigError, Section, load_yaml


@dataclass(frozen=True)
class PluginInfo:
    """What one initialization.xml plugin is, and what labbridge runs for it.

    ``provides`` is labbridge's equivalent in words (None: labbridge does not run it);
    ``serve`` and ``client`` are what a node must have for it, as ``service:<kind>``,
    ``device:<kind>`` or ``link:<role>`` (a ``remote_manager`` of that role): ``serve`` on a
    node whose plugin list has a command server (RemoteCommandServer or RemoteHardwareServer),
    ``client`` on any other node (spec pychron.md 16.1: ``ExtractionLine`` on a node with
    RemoteCommandServer is the server side, elsewhere the client side). Empty both: nothing to
    check on a node (``Experiment``: the scripts ``labbridge run`` runs).
    """

    name: str
    what: str
    provides: str | None = None
    serve: tuple[str, ...] = ()
    client: tuple[str, ...] = ()
    #: What labbridge runs for it on a client node, when that differs from ``provides``.
    provides_client: str | None = None

    def needs(self, serving: bool) -> tuple[str, ...]:
        return self.serve if serving else self.client

    def equivalent(self, serving: bool) -> str | None:
        return self.provides if serving or self.provides_client is None \
            else self.provides_client


_VALVES = ("the valve bank behind a pychron_command_server (kinds valve_bank, flag, "
           "gauge_controller)")
_LASERS = ("FusionsCO2", "FusionsDiode", "OsTechDiode", "FusionsUV")

#: Every plugin name initialization.xml may enable: the seed's names, the real Pychron names
#: the spec lists (pychron.md 16.1), and the legacy RemoteHardwareServer. ``labbridge check``
#: says for each what labbridge runs for it, or that it does not run it (docs/seeds.md).
PLUGINS: dict[str, PluginInfo] = {p.name: p for p in [
    PluginInfo("RemoteCommandServer", "the command server of a valve or furnace node",
               "service pychron_command_server (TCP 1061, braced/plain/JSON, optional UDP)",
               ("service:pychron_command_server",), ("service:pychron_command_server",)),
    PluginInfo("RemoteHardwareServer", "the legacy command front (superseded by "
               "RemoteCommandServer)",
               "service relay_front_server (the legacy relay front), or pychron_command_server "
               "with remote_hardware_server: command_server in the node file",
               ("service:relay_front_server",), ("service:relay_front_server",)),
    PluginInfo("ExtractionLine", "the extraction line: valves, gauges, flags", _VALVES,
               ("device:valve_bank",), ("link:valves",),
               "a remote_manager of valves (lab.line in labbridge run)"),
    PluginInfo("ClientExtractionLine", "the acquisition side of a remote extraction line",
               "a remote_manager of valves (lab.line in labbridge run)",
               ("link:valves",), ("link:valves",)),
    *[PluginInfo(n, what, "device furnace behind a pychron_command_server",
                 ("device:furnace",), ("link:furnace",),
                 "a remote_manager of a furnace (lab.furnace in labbridge run)")
      for n, what in (("Furnace", "the furnace (furPi)"),
                      ("NMGRLFurnace", "the furnace (real Pychron name)"))],
    *[PluginInfo(n, what, "device laser behind a pychron_command_server", ("device:laser",),
                 ("link:laser",), "a remote_manager of a laser (lab.laser in labbridge run)")
      for n, what in (("Laser", "the heating laser"),
                      *((n, "a heating laser (real Pychron name)") for n in _LASERS))],
    PluginInfo("Spectrometer", "the mass spectrometer (Qtegra RemoteControlServer)",
               "device mass_spectrometer behind a qtegra_server, or a remote_manager of a "
               "spectrometer (lab.spectrometer in labbridge run)",
               ("device:mass_spectrometer", "link:spectrometer"),
               ("link:spectrometer", "device:mass_spectrometer")),
    PluginInfo("DashboardServer", "the dashboard value stream (ZMQ PUB 8100 / REP 8101)",
               "service dashboard_server", ("service:dashboard_server",),
               ("service:dashboard_server",)),
    PluginInfo("DashboardClient", "a dashboard follower",
               "service dashboard_client, or the web page (web_dashboard)",
               ("service:dashboard_client", "service:web_dashboard"),
               ("service:dashboard_client", "service:web_dashboard")),
    PluginInfo("Database", "the analysis database",
               "service recorder: every bus message into SQLite (labbridge history)",
               ("service:recorder",), ("service:recorder",)),
    PluginInfo("Experiment", "the experiment queue and extraction scripts",
               "labbridge run SCRIPT --lab NODE-FILE (the scripting API: lab.line, "
               "lab.furnace, lab.laser, lab.spectrometer)"),
    PluginInfo("Canvas", "the extraction-line canvas",
               "the web_dashboard's schematic (docs/web.md)",
               ("service:web_dashboard",), ("service:web_dashboard",)),
    PluginInfo("DVC", "data version control of analyses in git repositories"),
    PluginInfo("GitHub", "the GitHub connection of DVC"),
    PluginInfo("Pipeline", "pyCrunch's data-reduction pipeline"),
    PluginInfo("MassSpec", "the MassSpec database bridge"),
    PluginInfo("Entry", "sample and irradiation entry"),
    PluginInfo("Loading", "tray loading"),
    PluginInfo("Video", "video of the sample stage"),
    PluginInfo("Geochron", "upload to Geochron"),
    PluginInfo("LabBook", "the lab notebook"),
    PluginInfo("Classifier", "the analysis classifier"),
    PluginInfo("Sparrow", "the Sparrow data-system bridge"),
    PluginInfo("Social", "email and social notifications"),
    PluginInfo("Update", "Pychron's self-update"),
]}

#: Plugin names accepted in initialization.xml.
KNOWN_PLUGINS = frozenset(PLUGINS)

#: The node roles of the seed's table and their key plugins ("Laser or Furnace": one of a
#: group in a tuple is enough). ``labbridge check`` warns when a key plugin that labbridge
#: has an equivalent for has none on the node.
ROLE_KEY_PLUGINS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "acquisition": ("DVC", "Spectrometer", "ExtractionLine", ("Laser", "Furnace")),
    "valve-controller": ("ExtractionLine", "RemoteCommandServer"),
    "data-reduction": ("DVC", "Pipeline"),
    "furnace-controller": ("Furnace", "RemoteCommandServer"),
}

#: Plugins that make a node the server side (spec 16.1).
SERVER_PLUGINS = ("RemoteCommandServer", "RemoteHardwareServer")

#: What each role's plugin list holds (the seed's initialization.xml files).
ROLE_PLUGINS = {
    "acquisition": "DVC, GitHub, Database, Spectrometer, ExtractionLine, Experiment, Laser, "
                   "DashboardServer, as examples/lab/seed/pyexperiment-initialization.xml",
    "valve-controller": "ExtractionLine, RemoteCommandServer, as "
                        "examples/lab/seed/pyvalve-initialization.xml",
    "data-reduction": "DVC, GitHub, Database, Pipeline, DashboardClient, as "
                      "examples/lab/seed/pycrunch-initialization.xml",
    "furnace-controller": "Furnace, RemoteCommandServer, as "
                          "examples/lab/seed/furpi-initialization.xml",
}

#: The roles in words.
ROLE_NAMES = {"acquisition": "acquisition computer", "valve-controller": "valve controller",
              "data-reduction": "data-reduction workstation",
              "furnace-controller": "furnace controller", "laser-controller": "laser controller",
              "dashboard": "dashboard", "unknown": "node of no known role"}


def migration_warnings(init: Initialization) -> list[str]:
    """A warning for each enabled legacy plugin (RemoteHardwareServer), saying what a node
    does with it and how to migrate."""
    line = init.line_of("RemoteHardwareServer")
    if "RemoteHardwareServer" not in init.enabled():
        return []
    return [f"{init.path}:{line}: RemoteHardwareServer is the legacy command front, "
            "superseded by RemoteCommandServer: a node file naming this file serves it with "
            "its relay_front_server (or its pychron_command_server with "
            "remote_hardware_server: command_server); to migrate, write RemoteCommandServer "
            f"instead at {init.path}:{line} and serve a pychron_command_server (docs/seeds.md)"]


def plugin_notes(init: Initialization) -> list[str]:
    """One line per enabled plugin: what labbridge runs for it, or that it does not
    (``xml:line: Name: ...``)."""
    out = []
    for p in init.plugins:
        if not p.enabled:
            continue
        info = PLUGINS[p.name]
        where = f"{init.path}:{p.line}: {p.name}"
        equivalent = info.equivalent(init.serving())
        if equivalent is None:
            out.append(f"{where}: not run by labbridge ({info.what}); accepted and ignored")
        else:
            out.append(f"{where}: labbridge equivalent: {equivalent}")
    return out


#: Seed ``klass`` names and what labbridge builds for them (spec 16.2).
KLASSES = {
    "RemoteExtractionLineManager": "valves",
    "PychronGPActuator": "valves",
    "RemoteFurnaceManager": "furnace",
    "NMGRLFurnaceEurotherm": "furnace",
    "RemoteLaserManager": "laser",
    "ArgusSpectrometer": "spectrometer",
    "QtegraSpectrometer": "spectrometer",
}


@dataclass(frozen=True)
class Plugin:
    name: str
    enabled: bool
    group: str  # "globals", "general", "hardware", ...
    line: int


@dataclass
class Initialization:
    """An initialization.xml: the plugins a node enables."""

    path: str
    plugins: list[Plugin] = field(default_factory=list)

    def enabled(self) -> list[str]:
        return [p.name for p in self.plugins if p.enabled]

    def serving(self) -> bool:
        """The plugin list has a command server: its ExtractionLine, Furnace and Laser are
        the server side (spec 16.1)."""
        return bool(set(self.enabled()) & set(SERVER_PLUGINS))

    def line_of(self, name: str) -> int:
        return next((p.line for p in self.plugins if p.name == name), 0)

    def role(self) -> str:
        """The node role of the seed's table that these plugins describe."""
        on = set(self.enabled())
        if self.serving() and on & {"Furnace", "NMGRLFurnace"}:
            return "furnace-controller"
        if self.serving() and "ExtractionLine" in on:
            return "valve-controller"
        if self.serving() and on & {"Laser", *_LASERS}:
            return "laser-controller"
        if "Pipeline" in on or "DashboardClient" in on:
            return "data-reduction"
        if "Experiment" in on or "Spectrometer" in on:
            return "acquisition"
        if "DashboardServer" in on:
            return "dashboard"
        return "unknown"


@dataclass
class _El:
    tag: str
    attrs: dict[str, str]
    line: int
    text: str = ""
    children: list[_El] = field(default_factory=list)

    def iter(self) -> list[_El]:
        out = [self]
        for c in self.children:
            out.extend(c.iter())
        return out


def _parse_xml(data: bytes, name: str) -> _El:
    """A tiny expat tree that keeps each element's line (ElementTree does not)."""
    parser = expat.ParserCreate()
    stack: list[_El] = []
    roots: list[_El] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        el = _El(tag, attrs, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(el)
        else:
            roots.append(el)
        stack.append(el)

    def end(tag: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1].text += text

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ConfigError(f"XML syntax error: {expat.errors.messages[exc.code]}", file=name,
                          line=exc.lineno) from None
    return roots[0]


def load_initialization(path: str | Path) -> Initialization:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=str(p)) from exc
    root = _parse_xml(data, str(p))
    if root.tag != "root":
        raise ConfigError(f"the top element must be <root>, not <{root.tag}>", file=str(p),
                          line=root.line)
    init = Initialization(str(p))
    for group in root.iter():
        for el in group.children:
            if el.tag != "plugin":
                continue
            name = el.text.strip().split("\n")[0].strip()
            line = el.line
            field_name = f"{group.tag}/plugin"
            if not name:
                raise ConfigError("a <plugin> element needs a name", file=str(p), line=line,
                                  field=field_name)
            enabled_text = el.attrs.get("enabled", "true").strip().lower()
            if enabled_text not in ("true", "false"):
                raise ConfigError(f"enabled must be true or false, got {enabled_text!r}",
                                  file=str(p), line=line, field=f"{field_name}[{name}]")
            if name not in KNOWN_PLUGINS:
                close = difflib.get_close_matches(name, sorted(KNOWN_PLUGINS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    " (docs/seeds.md lists the plugins labbridge knows)"
                raise ConfigError(f"unknown plugin {name!r}{hint}", file=str(p), line=line,
                                  field=f"{field_name}[{name}]")
            init.plugins.append(Plugin(name, enabled_text == "true", group.tag, line))
    if not init.plugins:
        raise ConfigError("no <plugin> elements found", file=str(p), line=root.line)
    return init


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                          r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_host(sec: Section, key: str) -> str:
    """A host must be an IP address (the seed: 'use IP addresses') or a valid host name."""
    host: str = sec.get_str(key)
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise sec.error(key, f"{host!r} is not a valid IPv4 address; the node would be "
                            "unreachable") from None
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(host):
        raise sec.error(key, f"{host!r} is neither an IP address nor a host name")
    return host


@dataclass(frozen=True)
class DeviceLink:
    """How the acquisition computer reaches one remote node (a device YAML)."""

    name: str
    klass: str
    role: str  # "valves", "furnace", "laser", "spectrometer"
    host: str
    port: int
    timeout: float
    kind: str = "TCP"  # or "UDP"
    source: str = ""
    shape: str = "seed"  # or "real"


def load_device_file(path: str | Path, *, profile: str = "seed") -> DeviceLink:
    """Read a device YAML in either shape; ``profile='pychron-real'`` defaults kind to UDP."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError("a device file must be a mapping", file=str(p), line=1)
    root = Section(data, file=str(p))
    if "General" in data or "Communications" in data:
        general = root.get_section("General")
        comms = root.get_section("Communications")
        name = general.get_str("name")
        klass = general.get_str("klass", None) or general.get_str("type")
        host = check_host(comms, "host")
        port = comms.get_port("port")
        timeout = comms.get_float("timeout", 1.0, min=0.001, max=3600)
        kind = comms.get_choice("kind", ("TCP", "UDP"), "UDP" if profile == "pychron-real"
                                else "TCP")
        general.unknown_keys()
        shape = "real"
        klass_sec, klass_key = general, "klass" if "klass" in general else "type"
    else:
        name = root.get_str("name")
        klass = root.get_str("klass")
        host = check_host(root, "host")
        port = root.get_port("port")
        timeout = root.get_float("timeout", 2.0, min=0.001, max=3600)
        kind = root.get_choice("kind", ("TCP", "UDP"), "TCP")
        shape = "seed"
        klass_sec, klass_key = root, "klass"
        root.check_no_unknown()
    role = KLASSES.get(klass)
    if role is None:
        raise klass_sec.error(klass_key, f"unknown klass {klass!r} (known: "
                              f"{', '.join(sorted(KLASSES))})")
    if port == 0:
        raise root.error("port", "a remote node's port cannot be 0")
    return DeviceLink(name, klass, role, host, port, timeout, kind, str(p), shape)


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    source: str


def load_server_file(path: str | Path) -> ServerConfig:
    """The seed's ``setupfiles/servers/remote_command_server.yaml``: ``port``, ``host``."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError("a server file must be a mapping with port and host", file=str(p),
                          line=1)
    root = Section(data, file=str(p))
    host = root.get_str("host", "127.0.0.1")  # the seed writes 0.0.0.0 explicitly
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise root.error("host", f"{host!r} is not an IP address to listen on") from None
    port = root.get_port("port", 1061)
    root.check_no_unknown()
    return ServerConfig(host, port, str(p))


def detect_kind(path: str | Path) -> str:
    """What kind of configuration file ``path`` is: node, initialization, device, server,
    dashboard."""
    p = Path(path)
    if p.suffix.lower() == ".xml":
        return "initialization"
    data: Any = load_yaml(p)
    if isinstance(data, list):
        return "dashboard"
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top of the file", file=str(p), line=1)
    if "node" in data:
        return "node"
    if "klass" in data or "General" in data or "Communications" in data:
        return "device"
    if "devices" in data:
        return "dashboard"
    if set(data) <= {"port", "host"}:
        return "server"
    raise ConfigError("cannot tell what kind of file this is (a node file has 'node:', a "
                      "device file 'klass:', a server file 'port:' and 'host:')",
                      file=str(p), line=1)
