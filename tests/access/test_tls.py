"""TLS contexts with client certificates, from certificates made by `labbridge keys`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat

import pytest

from labbridge.transport.tls import (
    TlsConfigError,
    client_context,
    peer_common_name,
    server_context,
)
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site CA with a node and a client certificate, and a stranger's CA and certificate."""
    d = tmp_path_factory.mktemp("keys")
    other = tmp_path_factory.mktemp("other")
    for args in (("tls-ca", "--dir", str(d)),
                 ("tls-cert", "node", "--dir", str(d), "--host", "127.0.0.1"),
                 ("tls-cert", "alice", "--dir", str(d)),
                 ("tls-ca", "--dir", str(other)),
                 ("tls-cert", "mallory", "--dir", str(other))):
        result = run_cli("keys", *args)
        assert result.returncode == 0, result.stderr
    return d, other


def test_key_files_are_private(site):
    d, _ = site
    for name in ("ca.pem", "node.pem", "alice.pem"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    again = run_cli("keys", "tls-ca", "--dir", str(d))
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr


async def _serve_once(ctx: ssl.SSLContext):
    names: asyncio.Queue = asyncio.Queue()

    async def handle(reader, writer):
        names.put_nowait(peer_common_name(writer.transport))
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(b"hello\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], names


async def test_client_certificate_names_the_identity(site):
    d, other = site
    server, port, names = await _serve_once(
        server_context(d / "node.crt", d / "node.pem", d / "ca.crt"))
    try:
        good = client_context(d / "ca.crt", d / "alice.crt", d / "alice.pem")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=good), 5)
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
        assert await asyncio.wait_for(names.get(), 5) == "alice"
        writer.close()
        # No client certificate, or one from another CA: the handshake fails.
        for ctx in (client_context(d / "ca.crt"),
                    client_context(d / "ca.crt", other / "mallory.crt", other / "mallory.pem")):
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5)
                try:
                    line = await asyncio.wait_for(r.readline(), 5)
                    if not line:
                        raise ConnectionError("closed by the server")
                finally:
                    w.close()
        # A client that trusts another CA refuses our server.
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(other / "ca.crt")), 5)
    finally:
        server.close()
        await server.wait_closed()


def test_missing_files_are_one_line_errors(site, tmp_path):
    d, _ = site
    with pytest.raises(TlsConfigError, match=r"cannot read .*nope\.crt: no such file"):
        server_context(tmp_path / "nope.crt", d / "node.pem", d / "ca.crt")
    with pytest.raises(TlsConfigError, match="cannot use certificate"):
        server_context(d / "node.crt", d / "alice.pem", d / "ca.crt")  # key of another cert
    with pytest.raises(TlsConfigError, match="needs its key"):
        client_context(d / "ca.crt", d / "alice.crt")


async def test_a_client_certificate_cannot_pass_for_a_node(site):
    """`keys tls-cert NAME` without --host is a client's certificate: a server presenting it
    is refused by our clients (no server use, no address)."""
    d, _ = site
    server, port, _names = await _serve_once(
        server_context(d / "alice.crt", d / "alice.pem", d / "ca.crt",
                       require_client_cert=False))
    try:
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(d / "ca.crt")), 5)
    finally:
        server.close()
        await server.wait_closed()
