"""The relay front's HTTP GET form (issue 20 item 1), as a user meets it: raw requests over
real loopback TCP (what curl sends), the node file through ``labbridge serve`` with the real
curl, and the documented commands.

What it shows: a GET is a request like any other (the same reply text as the plain form,
routed with the front's process type, judged by the processor's gate by the sender's
address); the reply is HTTP/1.0 (BaseHTTPRequestHandler's shape, cited in
tests/pychron/test_httpget.py); nothing reachable reads a file; a request a web page made is
refused with 403; the request is bounded (size, deadline from its first byte); the plain form
is unchanged, even when its first bytes could begin "GET ".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from labbridge.access import Gate, Policy, Role
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.relay import CommandRepeater, RelayFrontServer, RelayProcessor
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.relay import decode_crc_reply
from tests.cli_helpers import port_of, serving
from tests.conftest import REPO
from tests.docs.mdshell import shell_blocks
from tests.hardware.test_cli_hardware import _relay_files
from tests.hardware.test_relay import SAMPLE
from tests.pychron.server_helpers import ask_like_pychron, bank_from_vector

DEADLINE = 10.0
STRANGER = "127.0.0.4"  # no role in the gate below (Linux routes 127/8 to loopback)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="lbh", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def chain(sock_dir: Path, **front_kw: Any,
                ) -> AsyncIterator[tuple[dict[str, RelayFrontServer], Any]]:
    """A processor answering Extractionline and Hardware (both the valves), not Diode, and
    a front per process type."""
    bank = bank_from_vector(SAMPLE)  # A closed, B open, C closed + software-locked
    await bank.start()
    path = str(sock_dir / "hw")
    # 127.0.0.1 is admin, the other loopback addresses nobody
    gate = Gate(Policy(addresses={Role.ADMIN: (ipaddress.ip_network("127.0.0.1/32"),)},
                       udp_writers=(), configured=True))
    processor = RelayProcessor(path, {"Extractionline": Dispatcher([ValveCommands([bank])], gate),
                                      "Hardware": Dispatcher([ValveCommands([bank])], gate)})
    fronts = {ptype: RelayFrontServer(CommandRepeater(path, ptype), "127.0.0.1", 0,
                                      name=f"front-{ptype}", **front_kw)
              for ptype in ("Extractionline", "Hardware", "Diode")}
    await processor.start()
    for f in fronts.values():
        await f.start()
    try:
        yield fronts, bank
    finally:
        for f in fronts.values():
            await f.stop()
        await processor.stop()
        await bank.stop()


async def raw(port: int, data: bytes, *, source: str = "127.0.0.1") -> bytes:
    """What a client reads for ``data`` on a new connection, until the server closes."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        try:
            writer.write(data)
            return await reader.read()
        finally:
            writer.close()


def curl_request(path: str, host: str = "127.0.0.1:1061", **headers: str) -> bytes:
    """The bytes curl 7/8 sends for ``curl http://HOST/PATH`` (plus ``headers``)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: curl/8.5.0", "Accept: */*"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = reply.partition(b"\r\n\r\n")
    assert sep, reply
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


async def get(front: RelayFrontServer, request: str, **kw: Any) -> tuple[str, bytes]:
    assert front.port
    status, _headers, body = parse(await raw(front.port, curl_request(request, **kw)))
    return status, body


async def plain(front: RelayFrontServer, request: str, source: str = "127.0.0.1") -> str:
    assert front.port
    return decode_crc_reply((await raw(front.port, request.encode() + b"\r\n",
                                       source=source)).rstrip(b"\n"))


# -- a request like any other -------------------------------------------------------------

async def test_a_get_is_answered_with_the_plain_forms_reply(sock_dir):
    async with chain(sock_dir) as (fronts, bank):
        front = fronts["Extractionline"]
        assert front.port
        reply = await raw(front.port, curl_request("/Open%20A"))
        status, headers, body = parse(reply)
        assert status == "HTTP/1.0 200 OK"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["server"].startswith("labbridge/")
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["date"])
        assert body == b"OK\n"
        assert bank.is_open("A") is True  # it really acted
        for request in ("GetValveStates", "GetValveState A", "GetValveState Z",
                        "GetStateChecksum A,B,C", "Open C", "NoSuchCommand", "PychronReady"):
            status, body = await get(front, "/" + request.replace(" ", "%20"))
            assert (status, body) == ("HTTP/1.0 200 OK",
                                      (await plain(front, request)).encode() + b"\n"), request


async def test_the_process_type_routing_is_the_plain_forms(sock_dir):
    async with chain(sock_dir) as (fronts, _bank):
        answers = {}
        for ptype, front in fronts.items():
            _status, body = await get(front, "/GetValveState%20B")
            answers[ptype] = body.decode().strip()
            assert answers[ptype] == await plain(front, "GetValveState B")
        # Extractionline and Hardware both have a handler here; Diode has none (ERROR 007).
        assert answers["Extractionline"] == answers["Hardware"] == "OK"  # (B is open)
        assert answers["Diode"].startswith("ERROR 007")


async def test_the_gate_judges_the_sender_of_a_get(sock_dir):
    async with chain(sock_dir) as (fronts, bank):
        front = fronts["Extractionline"]
        assert front.port
        status, _h, body = parse(await raw(front.port, curl_request("/Open%20A"),
                                           source=STRANGER))
        text = body.decode().strip()
        assert status == "HTTP/1.0 200 OK" and text.startswith("ERROR 013")
        assert text == await plain(front, "Open A", source=STRANGER)
        assert bank.is_open("A") is False


async def test_nothing_reachable_reads_a_file(sock_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    async with chain(sock_dir) as (fronts, _bank):
        front = fronts["Extractionline"]
        for path in ("/etc/passwd", "/../../../../etc/passwd", f"/{secret}", "/",
                     "/index.html", f"/%2F{str(secret)[1:]}"):
            status, body = await get(front, path)
            assert status == "HTTP/1.0 200 OK"
            assert body.startswith(b"ERROR "), (path, body)  # a (bad) command, never a file
            assert b"root:" not in body and b"s3cret" not in body


async def test_http_09_gets_the_reply_alone(sock_dir):
    async with chain(sock_dir) as (fronts, _bank):
        front = fronts["Extractionline"]
        assert front.port
        assert await raw(front.port, b"GET /GetValveState%20B\r\n") == b"OK\n"


# -- a web page cannot use its visitor -----------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Sec_Fetch_Site": "cross-site"}, {"Sec_Fetch_Site": "same-origin"},
    {"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page.html"},
    {"host": "evil.example:1061"},
])
async def test_a_request_made_by_a_web_page_is_refused(sock_dir, headers, caplog):
    async with chain(sock_dir) as (fronts, bank):
        front = fronts["Extractionline"]
        headers = dict(headers)
        host = headers.pop("host", "127.0.0.1:1061")
        status, body = await get(front, "/Open%20A", host=host, **headers)
        assert status.startswith("HTTP/1.0 403 ")
        assert bank.is_open("A") is False and front.http_refused == 1
        assert b"web page" in body or b"http_hosts" in body
        assert any("refused an HTTP request from 127.0.0.1" in r.getMessage()
                   for r in caplog.records)


async def test_typed_urls_and_named_hosts_are_served(sock_dir):
    async with chain(sock_dir, http_hosts=["valve-pc.lab"]) as (fronts, _bank):
        front = fronts["Extractionline"]
        # typed in the address bar: Sec-Fetch-Site none, no Origin or Referer
        assert await get(front, "/Open%20A", Sec_Fetch_Site="none") == ("HTTP/1.0 200 OK",
                                                                          b"OK\n")
        for host in ("valve-pc.lab:1061", "VALVE-PC.lab", "localhost:1061", "[::1]:1061",
                     "10.0.0.7"):
            assert await get(front, "/GetValveState%20A", host=host) == (
                "HTTP/1.0 200 OK", b"OK\n"), host
        assert front.http_refused == 0


# -- bounded, and the plain form unchanged -------------------------------------------------

async def test_http_faults_get_http_errors(sock_dir):
    async with chain(sock_dir) as (fronts, bank):
        front = fronts["Extractionline"]
        assert front.port
        cases = {
            b"POST /Open%20A HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc": "501",
            b"HEAD /Open%20A HTTP/1.0\r\n\r\n": "501",
            b"GET /Open%20A HTTP/2.0\r\n\r\n": "505",
            b"GET /Open%20A FOO/1.0\r\n\r\n": "400",
            b"GET /Open%0D%0AClose%20B HTTP/1.0\r\n\r\n": "400",
            b"GET /" + b"x" * 70000 + b" HTTP/1.0\r\n\r\n": "414",
            b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n": "431",
        }
        for request, code in cases.items():
            reply = await raw(front.port, request)
            assert reply.startswith(b"HTTP/1.0 " + code.encode() + b" "), (request[:40], reply)
            assert b"\r\nConnection: close\r\n" in reply
        assert bank.is_open("A") is False and bank.is_open("B") is True


async def test_an_unfinished_request_is_cut_at_its_deadline_from_the_first_byte(sock_dir):
    async with chain(sock_dir, request_timeout=0.3) as (fronts, bank):
        front = fronts["Extractionline"]
        assert front.port
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            try:
                writer.write(b"GET /Open%20A HTTP/1.0\r\nHost: 127.0.0.1\r\n")  # no empty line
                reply = b""
                while not reply.endswith(b"\n") or b"\r\n\r\n" not in reply:
                    # a header line every 50 ms: the trickle does not move the deadline
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            chunk = await reader.read(4096)
                            if not chunk:
                                break
                            reply += chunk
                    if not reply:
                        with contextlib.suppress(ConnectionError):
                            writer.write(b"X-Trickle: 1\r\n")
            finally:
                writer.close()
        assert reply.startswith(b"HTTP/1.0 408 request not complete within 0.3 s")
        assert bank.is_open("A") is False


async def test_the_plain_form_is_unchanged_even_byte_by_byte(sock_dir):
    async with chain(sock_dir) as (fronts, _bank):
        front = fronts["Extractionline"]
        assert front.port
        # "GetV..." begins like "GET " for three bytes: it stays a plain request.
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            try:
                for b in b"GetValveState B\r\n":
                    writer.write(bytes([b]))
                    await writer.drain()
                got = await reader.read()
            finally:
                writer.close()
        assert decode_crc_reply(got.rstrip(b"\n")) == "OK"
        # A plain request that stops after "GE" with no terminator: the quiet gap ends it.
        got, closed = await ask_like_pychron(front.port, b"GE")
        assert closed and decode_crc_reply(got.rstrip(b"\n")).startswith("ERROR 003")


async def test_http_false_serves_the_plain_form_only(sock_dir):
    async with chain(sock_dir, http=False) as (fronts, bank):
        front = fronts["Extractionline"]
        assert front.port
        got = await raw(front.port, curl_request("/Open%20A"))
        assert not got.startswith(b"HTTP/")
        assert decode_crc_reply(got.rstrip(b"\n")).startswith("ERROR 003")
        assert bank.is_open("A") is False


# -- through the node file and `labbridge serve`, with the real curl ---------------------------

DOC = REPO / "docs" / "hardware-nodes.md"


def documented_curl() -> list[tuple[str, list[str]]]:
    """The doc's curl commands and their expected output lines (docs/doc-tests.md)."""
    return [(c.text, c.expect) for b in shell_blocks(DOC) for c in b.commands
            if c.text.startswith("curl ")]


def test_the_documented_curl_commands_against_the_example_node(tmp_path, sock_dir):
    """The doc's curl lines, run against the example node on a free port (tests/docs runs
    the whole block as written, on port 1061, in a private network namespace)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = documented_curl()
    assert len(commands) >= 2
    whole, _p, _f = _relay_files(sock_dir, tmp_path)
    with serving(whole, tmp_path) as (_proc, info):
        port = port_of(info)
        for command, expect in commands:
            argv = [a.replace("127.0.0.1:1061", f"127.0.0.1:{port}") for a in shlex.split(command)]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
            assert res.returncode == 0, (command, res.stderr)
            assert res.stdout.splitlines() == expect, (command, res.stdout)
