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
