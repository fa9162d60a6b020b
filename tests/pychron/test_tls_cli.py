"""``labbridge call`` / ``labbridge monitor`` with ``--tls-ca/--tls-cert/--tls-key`` against
``labbridge serve`` with a TLS command server, as a user runs them (subprocesses; both ends on
uvloop when it is installed, as labbridge runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import port_of, run_cli, serving
from tests.pychron.test_tls import node_text, site  # noqa: F401  (the module's key fixture)


@pytest.fixture
def served(site: Path, tmp_path: Path):  # noqa: F811
    path = site / f"cli-{tmp_path.name}.yaml"
    path.write_text(node_text())
    with serving(path, tmp_path) as (_proc, info):
        yield port_of(info), tmp_path / "serve.log"


def tls_args(site: Path, name: str | None) -> list[str]:  # noqa: F811
    args = ["--tls-ca", str(site / "keys" / "ca.crt")]
    if name is not None:
        args += ["--tls-cert", str(site / "keys" / f"{name}.crt"),
                 "--tls-key", str(site / "keys" / f"{name}.pem")]
    return args


def one_line_error(result) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_call_over_tls_as_operator_and_observer(site, served):  # noqa: F811
    port, log = served
    target = f"127.0.0.1:{port}"
    opened = run_cli("call", *tls_args(site, "alice"), target, "Open", "A")
    assert (opened.returncode, opened.stdout.strip()) == (0, "OK"), opened.stderr
    state = run_cli("call", *tls_args(site, "olivia"), target, "GetValveState", "A")
    assert (state.returncode, state.stdout.strip()) == (0, "OK"), state.stderr
    refused = run_cli("call", *tls_args(site, "olivia"), target, "Close", "A")
    assert refused.returncode == 1
    assert refused.stdout.startswith("ERROR 012 : Access restricted to the operator role")
    plain_json = run_cli("call", "--framing", "json", *tls_args(site, "alice"), target,
                         "GetValveStates")
    assert plain_json.returncode == 0 and plain_json.stdout.startswith("A1"), plain_json
    text = log.read_text()
    assert "done: Open A by alice@127.0.0.1 as operator via command-server/tls" in text
    assert "refused: Close A by olivia@127.0.0.1 as observer" in text


def test_call_without_a_certificate_is_refused_in_one_line(site, served):  # noqa: F811
    port, log = served
    target = f"127.0.0.1:{port}"
    result = run_cli("call", *tls_args(site, None), target, "Open", "A")
    assert result.returncode == 2
    assert "refused our TLS client certificate" in one_line_error(result)
    plain = run_cli("call", "--timeout", "1", target, "Open", "A")  # no TLS at all
    assert plain.returncode == 2
    one_line_error(plain)
    check = run_cli("call", *tls_args(site, "alice"), target, "GetValveState", "A")
    assert (check.returncode, check.stdout.strip()) == (0, "False")  # nothing moved
    text = log.read_text()
    assert text.count("TLS handshake failed") == 2, text
    assert "Traceback" not in text


def test_monitor_once_over_tls(site, served):  # noqa: F811
    port, _ = served
    result = run_cli("monitor", "--once", *tls_args(site, "olivia"), f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "A" in result.stdout and "B" in result.stdout
    refused = run_cli("monitor", "--once", "--timeout", "0.5", *tls_args(site, None),
                      f"127.0.0.1:{port}")
    assert refused.returncode == 2
    assert "refused our TLS client certificate" in refused.stderr  # errors go to stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--tls-cert", "x.crt"], "need --tls-ca"),
    (["--tls-ca", "CA", "--tls-cert", "x.crt"], "go together"),
    (["--tls-ca", "nope.crt"], "cannot read nope.crt: no such file"),
    (["--tls-ca", "CA", "--udp"], "not with --udp"),
])
def test_tls_option_errors_are_one_line(site, args, says):  # noqa: F811
    args = [str(site / "keys" / "ca.crt") if a == "CA" else a for a in args]
    result = run_cli("call", *args, "127.0.0.1:1", "GetValveState", "A")
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
