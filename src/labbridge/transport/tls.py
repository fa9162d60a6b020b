"""TLS with client certificates for links whose both ends are labbridge (docs/security.md).

The braced Pychron channel, the PyMoDAQ link and the hexrotcomm link can run over TLS when a
site uses labbridge clients at both ends (a real Pychron, PyMoDAQ or Moog peer cannot). The
server requires a client certificate signed by the site's CA; the certificate's common name
is the client's identity, which the node's access policy maps to a role
(``security.identities.<name>.cert``). ``labbridge keys tls-ca`` and ``keys tls-cert`` make
the CA and the certificates.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable (the message names it)."""


def _exists(*paths: str | Path) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise TlsConfigError(f"cannot read {p}: no such file")


def _load(ctx: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    _exists(cert, key)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use certificate {cert} with key {key}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str | Path) -> None:
    _exists(ca)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use CA file {ca}: {exc}") from None


def server_context(cert: str | Path, key: str | Path, ca: str | Path,
                   *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context: TLS 1.2+, our certificate, client certificates verified against
    ``ca`` (required unless ``require_client_cert`` is False)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert, key)
    _load_ca(ctx, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: str | Path, cert: str | Path | None = None,
                   key: str | Path | None = None, *,
                   check_hostname: bool = False) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and presents ``cert``/``key`` if given.

    Host names are not checked by default: lab nodes are reached by IP address and the
    site's own CA signs only its own nodes; the server's certificate must still chain to it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca)
    if cert is not None:
        if key is None:
            raise TlsConfigError("a client certificate needs its key file too")
        _load(ctx, cert, key)
    return ctx


def peer_common_name(transport: asyncio.BaseTransport | Any) -> str | None:
    """The verified peer certificate's subject common name, or None (no TLS, no cert)."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
