"""The node file's security section, `labbridge check` exposure warnings, `labbridge keys`."""

from __future__ import annotations

import stat
import textwrap

import pytest
import yaml

from labbridge.access import Principal, Role, verify_secret
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from tests.cli_helpers import run_cli

VALVES = """\
devices:
  - {kind: valve_bank, name: valves, persist: false, backend: {kind: sim, delay: 0},
     valves: [{name: A, address: 0}]}
"""


def node_file(tmp_path, security: str = "", host: str = "127.0.0.1", name: str = "n.yaml"):
    path = tmp_path / name
    path.write_text("node: n\n" + security + VALVES + textwrap.dedent(f"""\
        services:
          - kind: pychron_command_server
            host: {host}
            port: 0
        """))
    return path


def test_no_section_is_the_default_policy(tmp_path):
    node = build_node(node_file(tmp_path))
    assert not node.ctx.gate.policy.configured
    assert node.ctx.gate.role_of(Principal("127.0.0.1")) is Role.ADMIN
    assert node.ctx.gate.role_of(Principal("10.1.1.1")) is Role.NOBODY
    assert node.ctx.gate.node == "n"


def test_a_full_section_is_read(tmp_path):
    sec = textwrap.dedent("""\
        security:
          addresses:
            admin: [127.0.0.1]
            operator: [192.168.1.10]
            observer: [192.168.1.0/24]
          udp_writers: [192.168.1.10]
          local: operator
          identities:
            alice: {role: operator, curve_key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
                    cert: alice}
        """)
    gate = build_node(node_file(tmp_path, sec)).ctx.gate
    assert gate.role_of(Principal("192.168.1.10", transport="udp")) is Role.OPERATOR
    assert gate.role_of(Principal("192.168.1.11", transport="udp")) is Role.OBSERVER
    assert gate.role_of(Principal("local", transport="local")) is Role.OPERATOR
    assert gate.policy.identity_for_cert("alice").role is Role.OPERATOR
    assert gate.policy.identity_for_curve_key(
        "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7").name == "alice"


@pytest.mark.parametrize(("section", "line", "field", "text"), [
    ("security:\n  addresses:\n    root: [10.0.0.1]\n", 3, "security.addresses.root",
     "unknown role 'root'"),
    ("security:\n  addresses:\n    operator: [10.0.0.300]\n", 3,
     "security.addresses.operator", "not an IP network"),
    ("security:\n  identities:\n    bob: {role: operator, password: hunter2}\n", 3,
     "security.identities.bob.password", "never write a plain password here"),
    ("security:\n  identities:\n    bob: {role: boss}\n", 3, "security.identities.bob.role",
     "must be one of observer, operator, admin"),
    ("security:\n  identities:\n    bob: {role: observer, curve_key: short}\n", 3,
     "security.identities.bob.curve_key", "40 Z85 characters"),
    ("security:\n  udp_writer: [10.0.0.1]\n", 2, "security.udp_writer", "unknown field"),
])
def test_bad_sections_name_file_line_and_field(tmp_path, section, line, field, text):
    path = node_file(tmp_path, section)
    with pytest.raises(ConfigError) as info:
        build_node(path)
    err = info.value
    # The file's first line is "node: n", so the section starts on line 2.
    assert (err.file, err.line, err.field) == (str(path), line + 1, field)
    assert text in err.message


def test_check_warns_about_listeners_beyond_loopback_without_access_rules(tmp_path):
    exposed = node_file(tmp_path, host="0.0.0.0", name="exposed.yaml")
    result = run_cli("check", str(exposed))
    assert result.returncode == 0, result.stderr
    warning = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1
    assert f"{exposed}:" in warning[0] and "services[0].host" in warning[0]
    assert "listens on 0.0.0.0" in warning[0] and "no security section" in warning[0]
    # Loopback only, or an address rule for the lab: no warning.
    for path in (node_file(tmp_path, name="local.yaml"),
                 node_file(tmp_path, "security:\n  addresses:\n    operator: [10.0.0.5]\n",
                           host="0.0.0.0", name="ruled.yaml")):
        result = run_cli("check", str(path))
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_keys_curve_writes_private_files_and_a_snippet_that_loads(tmp_path):
    keydir = tmp_path / "keys"
    result = run_cli("keys", "curve", "alice", "--dir", str(keydir))
    assert result.returncode == 0, result.stderr
    secret = keydir / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    public = (keydir / "alice.key").read_text()
    import zmq.auth

    pub, sec = zmq.auth.load_certificate(str(secret))
    assert sec is not None and len(pub) == 40 and pub.decode() in public
    # The printed snippet is valid YAML that the security section accepts.
    snippet = result.stdout.split("security section:\n", 1)[1]
    ident = yaml.safe_load(snippet)["identities"]["alice"]
    assert ident["curve_key"] == pub.decode()
    node = build_node(node_file(tmp_path, "security:\n" + textwrap.indent(snippet, "")))
    assert node.ctx.gate.policy.identity_for_curve_key(pub.decode()).name == "alice"
    again = run_cli("keys", "curve", "alice", "--dir", str(keydir))
    assert again.returncode != 0 and "exists; use --force" in again.stderr
    assert "Traceback" not in again.stderr


def test_keys_curve_makes_several_pairs_or_none(tmp_path):
    """Several names (a lab's computers, to try its node files on one machine): one pair
    each, all different; a bad or taken name writes nothing at all."""
    keydir = tmp_path / "keys"
    r = run_cli("keys", "curve", "a", "b", "c", "--dir", str(keydir))
    assert r.returncode == 0, r.stderr
    publics = {(keydir / f"{n}.key").read_text().splitlines()[1] for n in "abc"}
    assert len(publics) == 3
    assert all(stat.S_IMODE((keydir / f"{n}.key_secret").stat().st_mode) == 0o600
               for n in "abc")
    before = sorted(p.name for p in keydir.iterdir())
    taken = run_cli("keys", "curve", "d", "b", "--dir", str(keydir))
    assert taken.returncode == 1
    assert taken.stderr.strip() == f"Error: {keydir / 'b.key'} exists; use --force to replace it"
    bad = run_cli("keys", "curve", "e", "no/slash", "--dir", str(keydir))
    assert bad.returncode == 1 and "'no/slash': a key name may hold" in bad.stderr
    assert sorted(p.name for p in keydir.iterdir()) == before   # d and e were not written
    again = run_cli("keys", "curve", "b", "--force", "--dir", str(keydir))
    assert again.returncode == 0
    assert (keydir / "b.key").read_text().splitlines()[1] not in publics


def test_keys_passwd_and_token(tmp_path):
    proc = run_cli_input(["keys", "passwd", "bob", "--role", "operator", "--password-stdin"],
                         "correct horse\n")
    assert proc.returncode == 0, proc.stderr
    ident = yaml.safe_load(proc.stdout.split("security section:\n", 1)[1])["identities"]["bob"]
    assert ident["role"] == "operator" and verify_secret("correct horse", ident["password"])
    short = run_cli_input(["keys", "passwd", "bob", "--password-stdin"], "short\n")
    assert short.returncode != 0 and "at least 8 characters" in short.stderr
    tok = run_cli("keys", "token", "carol")
    assert tok.returncode == 0
    token = tok.stdout.split("): ", 1)[1].split("\n", 1)[0]
    ident = yaml.safe_load(tok.stdout.split("security section:\n", 1)[1])["identities"]["carol"]
    assert verify_secret(token, ident["token"]) and not verify_secret(token + "x", ident["token"])


def run_cli_input(args, text):
    import os
    import subprocess

    from tests.cli_helpers import labbridge_cmd
    from tests.conftest import REPO

    return subprocess.run(labbridge_cmd(*args), input=text, capture_output=True, text=True,
                          timeout=30, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
