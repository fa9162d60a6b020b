"""The initialization.xml of a node checked against what the node runs (seed 002's role table).

A node file may name the seed's ``initialization.xml`` (``initialization: seed/pyvalve-
initialization.xml``). :func:`check_plugins` reads its plugins against the node's devices,
services and remote links and says, with file and line on both sides:

* **errors** -- the two tell different stories: a plugin list with a command server
  (RemoteCommandServer, or the legacy RemoteHardwareServer) on a node that serves none, or a
  plugin list of one role of the seed's table on a node that runs another (a valve controller
  with pyCrunch's data-reduction list);
* **warnings** -- a key plugin of the role (the seed's table: acquisition = DVC, Spectrometer,
  ExtractionLine, Laser or Furnace; valve controller = ExtractionLine + RemoteCommandServer;
  data reduction = DVC, Pipeline; furnace controller = Furnace + RemoteCommandServer) that
  labbridge has an equivalent for, missing on the node; the legacy RemoteHardwareServer, with
  what the node did with it and how to migrate;
* **notes** -- for every enabled plugin, what labbridge runs for it on this node, or that
  labbridge does not run it (DVC, GitHub, Pipeline...).

The plugin catalogue is :data:`labbridge.node.seed.PLUGINS`; docs/seeds.md has the same
table in words; ADR 0190 the decisions.
"""

from __future__ import annotations

from labbridge.node.config import Section
from labbridge.node.seed import (
    PLUGINS,
    ROLE_KEY_PLUGINS,
    ROLE_NAMES,
    ROLE_PLUGINS,
    Initialization,
)

#: Part = (what, kind, name, line): ("device", "valve_bank", "valves", 7),
#: ("service", "pychron_command_server", "command-server", 20), ("link", "furnace", "furnace",
#: 30) -- a remote link of that role (a remote_manager service).
Part = tuple[str, str, str, int]

#: Services through which a node serves its devices to the network (the server side).
_SERVING = ("pychron_command_server", "relay_front_server", "relay_processor")

#: What to add for a missing requirement.
_HINTS = {
    "link:valves": "a remote_manager with klass RemoteExtractionLineManager (or device_file: "
                   "a seed device YAML)",
    "link:furnace": "a remote_manager with klass RemoteFurnaceManager (or device_file: the "
                    "seed's furnace.yaml)",
    "link:laser": "a remote_manager with klass RemoteLaserManager",
    "link:spectrometer": "a remote_manager with klass ArgusSpectrometer (Qtegra, port 1069)",
    "device:valve_bank": "a valve_bank device",
    "device:furnace": "a furnace device",
    "device:laser": "a laser device",
    "device:mass_spectrometer": "a mass_spectrometer device and its qtegra_server",
}

#: What a script sees of each link role (for warnings about missing links).
_SCRIPT_NAME = {"link:valves": "lab.line", "link:furnace": "lab.furnace",
                "link:laser": "lab.laser", "link:spectrometer": "lab.spectrometer"}


def _hint(req: str) -> str:
    what, _, kind = req.partition(":")
    return _HINTS.get(req, f"a {kind} {what}")


def offers(parts: list[Part]) -> set[str]:
    """``what:kind`` of every part (``service:recorder``, ``link:furnace``...)."""
    return {f"{what}:{kind}" for what, kind, _, _ in parts}


def node_role(parts: list[Part]) -> str | None:
    """The role of the seed's table the node plays, judged from what it runs (None: none of
    them, or no telling)."""
    have = offers(parts)
    serving = any(f"service:{k}" in have for k in _SERVING)
    if serving:
        for dev, role in (("furnace", "furnace-controller"), ("valve_bank", "valve-controller"),
                          ("laser", "laser-controller")):
            if f"device:{dev}" in have:
                return role
        return None
    if any(what == "link" for what, _, _, _ in parts):
        return "acquisition"
    if "service:recorder" in have and not any(what == "device" for what, *_ in parts):
        return "data-reduction"
    return None


def _evidence(parts: list[Part], file: str, role: str) -> str:
    """The parts that make the node play ``role``, with their lines."""
    def show(p: Part) -> str:
        return f"{p[1]} {p[2]!r} ({file}:{p[3]})"

    if role == "acquisition":
        links = [p for p in parts if p[0] == "link"][:3]
        return ", ".join(f"a {p[1]} link {p[2]!r} ({file}:{p[3]})" for p in links)
    if role == "data-reduction":
        return ", ".join(show(p) for p in parts if p[1] == "recorder")
    dev = {"furnace-controller": "furnace", "valve-controller": "valve_bank",
           "laser-controller": "laser"}[role]
    device = next(p for p in parts if p[0] == "device" and p[1] == dev)
    server = next(p for p in parts if p[0] == "service" and p[1] in _SERVING)
    return f"{show(device)} served by {show(server)}"


def _satisfied(req: tuple[str, ...], parts: list[Part]) -> list[Part]:
    return [p for p in parts if f"{p[0]}:{p[1]}" in req]


def check_plugins(root: Section, init: Initialization, parts: list[Part],
                  rhs_mode: str | None) -> tuple[list[str], list[str]]:
    """Cross-check ``init`` against ``parts``; return (warnings, notes) or raise
    :class:`~labbridge.node.config.ConfigError` (one line, at the node file's
    ``initialization`` field)."""
    file = root.file or "<node>"
    have = offers(parts)
    serving = init.serving()
    enabled = [p for p in init.plugins if p.enabled]
    errors: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []

    def at(name: str) -> str:
        return f"{init.path}:{init.line_of(name)}"

    # -- command servers: the plugin list and the node must agree (errors) -------------------
    rcs = "RemoteCommandServer" in init.enabled()
    rhs = "RemoteHardwareServer" in init.enabled()
    if rcs and "service:pychron_command_server" not in have:
        errors.append(f"{at('RemoteCommandServer')} enables RemoteCommandServer, but this node "
                      "has no pychron_command_server service")
    rhs_req = "service:pychron_command_server" if rhs_mode == "command_server" \
        else "service:relay_front_server"
    if rhs:
        served = _satisfied((rhs_req,), parts)
        if not served:
            if rhs_mode == "command_server":
                errors.append(f"{at('RemoteHardwareServer')} enables RemoteHardwareServer and "
                              "remote_hardware_server: command_server asks for it to be the "
                              "command server, but this node has no pychron_command_server "
                              "service")
            else:
                errors.append(
                    f"{at('RemoteHardwareServer')} enables RemoteHardwareServer (the legacy "
                    "relay front), but this node has no relay_front_server service: add one "
                    "(docs/hardware-nodes.md), or serve it as the command server with "
                    "remote_hardware_server: command_server, or migrate: write "
                    f"RemoteCommandServer at {at('RemoteHardwareServer')}")
        else:
            svc = served[0]
            if rhs_mode == "command_server":
                mode = root.error("remote_hardware_server", "")
                did = (f"loaded as the command server ({svc[1]} {svc[2]!r} at {file}:{svc[3]}), "
                       f"as remote_hardware_server: command_server asks ({file}:{mode.line}); to "
                       f"migrate, write RemoteCommandServer at {at('RemoteHardwareServer')} "
                       "and drop remote_hardware_server from the node file")
            else:
                did = (f"loaded as the legacy relay front ({svc[1]} {svc[2]!r} at "
                       f"{file}:{svc[3]}); to migrate, write RemoteCommandServer at "
                       f"{at('RemoteHardwareServer')} and serve a pychron_command_server "
                       "instead (docs/seeds.md)")
            warnings.append(f"{at('RemoteHardwareServer')}: RemoteHardwareServer (legacy, "
                            f"superseded by RemoteCommandServer) {did}")
    elif rhs_mode is not None:
        warnings.append(f"{file}:{root.error('remote_hardware_server', '').line}: "
                        f"remote_hardware_server: {init.path} does not enable "
                        "RemoteHardwareServer; the setting is ignored")

    # -- roles: the plugin list's role against the node's (an error) ------------------------
    xml_role = init.role()
    role = node_role(parts)
    if not errors and role is not None and xml_role in ROLE_PLUGINS and xml_role != role:
        first = min((p.line for p in enabled), default=0)
        listed = ", ".join(p.name for p in enabled)
        todo = (f"use a {ROLE_NAMES[role]}'s plugin list: {ROLE_PLUGINS[role]}"
                if role in ROLE_PLUGINS else "name the plugin list of this node's role")
        errors.append(f"{init.path}:{first} describes a{_an(ROLE_NAMES[xml_role])} "
                      f"{ROLE_NAMES[xml_role]} ({listed}), but this node is a{_an(ROLE_NAMES[role])} "
                      f"{ROLE_NAMES[role]}: {_evidence(parts, file, role)}; {todo}")
    if errors:
        more = f" (and {len(errors) - 1} more: {'; '.join(errors[1:])})" if len(errors) > 1 \
            else ""
        raise root.error("initialization", errors[0] + more)

    # -- key plugins of the role without their equivalent (warnings) -------------------------
    for key in ROLE_KEY_PLUGINS.get(xml_role, ()):
        group = key if isinstance(key, tuple) else (key,)
        on = [n for n in group if n in init.enabled()]
        if not on:
            continue
        # "Laser or Furnace": the equivalent of either member stands for the group.
        reqs = list(dict.fromkeys(r for n in group for r in PLUGINS[n].needs(serving)))
        if not reqs or _satisfied(tuple(reqs), parts):
            continue
        name = on[0]
        what = " or ".join(on)
        first_req = PLUGINS[name].needs(serving)[0]
        script = _SCRIPT_NAME.get(first_req)
        effect = f": {script} is not available to scripts" if script else ""
        warnings.append(f"{at(name)}: {what} is a key plugin of a{_an(ROLE_NAMES[xml_role])} "
                        f"{ROLE_NAMES[xml_role]}, but nothing on this node stands for it{effect}; add "
                        f"{' or '.join(_hint(r) for r in reqs)}")

    # -- every enabled plugin: what labbridge runs for it here (notes) -----------------------
    for p in enabled:
        info = PLUGINS[p.name]
        where = f"{init.path}:{p.line}: {p.name}"
        needs = info.needs(serving)
        if p.name == "RemoteHardwareServer":
            needs = (rhs_req,)
        if info.provides is None:
            notes.append(f"{where}: not run by labbridge ({info.what}); accepted and ignored")
        elif not needs:
            notes.append(f"{where}: labbridge equivalent: "
                         f"{info.provides.replace('NODE-FILE', file)}")
        elif found := _satisfied(needs, parts):
            shown = ", ".join(f"{q[1]} {q[0]} {q[2]!r} ({file}:{q[3]})" if q[0] == "link"
                              else f"{q[0]} {q[1]} {q[2]!r} ({file}:{q[3]})" for q in found[:3])
            notes.append(f"{where}: provided by {shown}")
        else:
            text = (f"{where}: labbridge equivalent: {' or '.join(_hint(r) for r in needs)}"
                    "; none on this node")
            for key in ROLE_KEY_PLUGINS.get(xml_role, ()):
                if isinstance(key, tuple) and p.name in key:
                    others = [q for n in key if n != p.name
                              for q in _satisfied(PLUGINS[n].needs(serving), parts)]
                    if others:
                        q = others[0]
                        text += (f"; the {q[1]} {q[0]} {q[2]!r} ({file}:{q[3]}) stands for "
                                 f"it ({' or '.join(key)} in the seed's role table)")
            notes.append(text)
    return warnings, notes


def _an(word: str) -> str:
    return "n" if word[:1] in "aeiou" else ""


__all__ = ["check_plugins", "node_role", "offers"]
