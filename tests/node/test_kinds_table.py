"""The static kind -> family table (lazy loading) matches what the family modules register,
and a node imports only the families its file uses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from labbridge.node import kinds
from labbridge.node.registry import DEVICE_KINDS, SERVICE_KINDS


def test_table_matches_the_registered_kinds():
    kinds.load_all()
    assert set(DEVICE_KINDS) == set(kinds.DEVICE_FAMILIES)
    assert set(SERVICE_KINDS) == set(kinds.SERVICE_FAMILIES)
    for kind, mod in kinds.DEVICE_FAMILIES.items():
        assert DEVICE_KINDS[kind].__module__ == mod, kind
    for kind, mod in kinds.SERVICE_FAMILIES.items():
        assert SERVICE_KINDS[kind].__module__ == mod, kind


def test_a_valve_node_imports_only_its_families(tmp_path):
    node = tmp_path / "valves.yaml"
    node.write_text(textwrap.dedent("""\
        node: valves
        devices:
          - kind: valve_bank
            name: valves
            valves: [{name: A}]
        services:
          - kind: pychron_command_server
            port: 0
            devices: [valves]
        """))
    code = textwrap.dedent(f"""\
        import json, sys
        from labbridge.cli import main
        rc = main(["check", {str(node)!r}])
        mods = sorted(m for m in sys.modules if m.startswith("labbridge.node.kinds.")
                      or m in ("aiohttp", "labbridge.links.pymodaq", "labbridge.web.app"))
        print(json.dumps({{"rc": rc, "modules": mods}}))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0, out.stderr
    assert res["modules"] == ["labbridge.node.kinds.pychron",
                              "labbridge.node.kinds.pychron_server"]


def test_command_table_matches_what_the_command_modules_register():
    import importlib
    import pkgutil

    import click

    import labbridge.cli as cli_pkg

    by_module: dict[str, set[str]] = {}
    for name, mod in cli_pkg.COMMANDS.items():
        by_module.setdefault(mod, set()).add(name)
    # Every module of the package that registers commands is in the table ...
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        module = importlib.import_module(f"labbridge.cli.{info.name}")
        if hasattr(module, "register"):
            assert module.__name__ in by_module, module.__name__
    # ... with exactly the commands it adds.
    for mod, names in by_module.items():
        group = click.Group()
        importlib.import_module(mod).register(group)
        assert set(group.commands) == names, mod
