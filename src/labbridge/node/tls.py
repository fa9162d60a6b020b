"""The ``tls:`` mapping of a node file's services: one parser for every link that can run
over TLS with client certificates (labbridge at both ends; docs/security.md).

A server (the Pychron command server, the PyMoDAQ server, ...)::

    tls:
      cert: keys/node.crt      # this server's certificate and key
      key: keys/node.pem
      ca: keys/ca.crt          # the site CA that signed the clients' certificates

A client (``pymodaq_client``, ``remote_manager``, the web dashboard's command servers...)::

    tls:
      cert: keys/cam.crt       # its own certificate and key (its common name is its
      key: keys/cam.pem        #   identity on the server: security.identities.<name>.cert)
      ca: keys/ca.crt          # the site CA that signed the server's certificate
      check_host: true         # the server's certificate must name the host connected to

Paths are relative to the node file; ``labbridge keys tls-ca`` and ``labbridge keys tls-cert
NAME`` make them. The server side always requires a client certificate; who that is, and
what it may do, is the node's ``security`` section (each server looks the certificate's
common name up with ``Policy.identity_for_cert``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from labbridge.node.config import Section
from labbridge.node.registry import NodeContext
from labbridge.transport.tls import TlsConfigError, client_context, server_context

_FILES = ("cert", "key", "ca")


def tls_section(sec: Section, ctx: NodeContext, *, server: bool) -> ssl.SSLContext | None:
    """The optional ``tls:`` of ``sec``: a server context (``server``: ``{cert, key, ca}``,
    client certificates required) or a client context (``{cert, key, ca, check_host}``), or
    None when there is no ``tls:``.

    A missing or unusable file is a one-line :class:`~labbridge.node.config.ConfigError`
    naming the node file's line and field and the file; ``check_host`` on a server is an
    unknown field (a server checks no host name)."""
    t = sec.get_section("tls", None)
    if t is None:
        return None
    paths: dict[str, Path] = {}
    for key in _FILES:
        path = ctx.resolve_path(t.get_str(key))
        if not path.is_file():
            raise t.error(key, f"cannot read {path}: no such file (`labbridge keys tls-ca` "
                               "and `labbridge keys tls-cert NAME` make them; docs/security.md)")
        paths[key] = path
    check_host = True if server else t.get_bool("check_host", True)
    t.check_no_unknown()
    try:
        if server:
            return server_context(paths["cert"], paths["key"], paths["ca"])
        return client_context(paths["ca"], paths["cert"], paths["key"],
                              check_hostname=check_host)
    except TlsConfigError as exc:
        raise t.error(None, str(exc)) from None
