"""``labbridge keys``: credentials for the access model (docs/security.md).

* ``keys curve NAME``: a CurveZMQ key pair for the bus. ``NAME.key_secret`` (mode 0600) stays
  with its owner; ``NAME.key`` (the public key) goes to the other side.
* ``keys passwd NAME``: a scrypt hash of a web password, for ``security.identities``.
* ``keys token NAME``: a random API token, shown once, and its hash.
* ``keys tls-ca`` and ``keys tls-cert NAME``: a site CA and certificates signed by it, for the
  optional TLS links between labbridge nodes and clients (needs the ``tls`` extra).

Nothing here is sent anywhere; each command prints the lines to paste into a node file.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from labbridge.access import hash_secret


def _write_private(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte (never world-readable on the way)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, mode)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have taken bits away; never added any


def _keydir(directory: str) -> Path:
    d = Path(directory).expanduser()
    if d.exists() and not d.is_dir():
        raise click.ClickException(f"{d} exists and is not a directory")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_mode & 0o022:
        raise click.ClickException(f"{d} is writable by other users (mode "
                                   f"{st.st_mode & 0o777:o}); use a private directory "
                                   f"(chmod 700 {d})")
    return d


@click.group()
def keys() -> None:
    """Make keys, password hashes and tokens for a node's security section."""


@keys.command("curve")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--dir", "directory", default="keys", show_default=True,
              help="Where to write NAME.key and NAME.key_secret (created with mode 0700).")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def curve(names: tuple[str, ...], directory: str, force: bool) -> None:
    """A CurveZMQ key pair for the bus: NAME.key (public) and NAME.key_secret (0600).

    Several names make several pairs (one per computer of a lab, to try its node files on
    one machine); nothing is written unless every name is good and free.
    """
    import zmq

    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise click.ClickException(f"{name!r}: a key name may hold letters, digits, '-' "
                                       "and '_' only")
    d = _keydir(directory)
    for name in names:
        for p in (d / f"{name}.key", d / f"{name}.key_secret"):
            if p.exists() and not force:
                raise click.ClickException(f"{p} exists; use --force to replace it")
    for name in dict.fromkeys(names):
        public, secret = zmq.curve_keypair()
        pub_path, sec_path = d / f"{name}.key", d / f"{name}.key_secret"
        for p in (pub_path, sec_path):
            if p.exists():
                p.unlink()
        pub_text, sec_text = public.decode("ascii"), secret.decode("ascii")
        _write_private(pub_path, f"# labbridge CurveZMQ public key of {name}\n"
                                 f"public-key = \"{pub_text}\"\n", 0o644)
        _write_private(sec_path, f"# labbridge CurveZMQ SECRET key of {name}: keep it private\n"
                                 f"public-key = \"{pub_text}\"\n"
                                 f"secret-key = \"{sec_text}\"\n", 0o600)
        click.echo(f"wrote {sec_path} (secret, mode 600) and {pub_path} (public)")
        click.echo("to let it in, add to the node file's security section:")
        click.echo(f"  identities:\n    {name}: {{role: observer, curve_key: \"{pub_text}\"}}")


@keys.command("passwd")
@click.argument("name")
@click.option("--role", type=click.Choice(["observer", "operator", "admin"]),
              default="observer", show_default=True)
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input instead of asking twice.")
def passwd(name: str, role: str, password_stdin: bool) -> None:
    """A scrypt hash of NAME's web password (the password itself is never stored)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"password for {name}", hide_input=True,
                                confirmation_prompt=True)
    if len(password) < 8:
        raise click.ClickException("a password needs at least 8 characters")
    click.echo("add to the node file's security section:")
    click.echo(f"  identities:\n    {name}: {{role: {role}, password: \"{hash_secret(password)}\"}}")


@keys.command("token")
@click.argument("name")
@click.option("--role", type=click.Choice(["observer", "operator", "admin"]),
              default="observer", show_default=True)
def token(name: str, role: str) -> None:
    """A random API token for NAME: printed once; the node file keeps only its hash."""
    tok = secrets.token_urlsafe(32)
    click.echo(f"token (shown once, give it to {name}): {tok}")
    click.echo("add to the node file's security section:")
    click.echo(f"  identities:\n    {name}: {{role: {role}, "
               f"token: \"{hash_secret(tok, kind='token')}\"}}")


def _crypto() -> object:
    try:
        import cryptography
    except ModuleNotFoundError:
        raise click.ClickException("TLS certificates need the cryptography package: "
                                   "pip install 'labbridge[tls]'") from None
    return cryptography


@keys.command("tls-ca")
@click.option("--dir", "directory", default="keys", show_default=True,
              help="Where to write ca.crt and ca.pem (the CA key, mode 0600).")
@click.option("--name", default="labbridge site CA", show_default=True)
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True)
def tls_ca(directory: str, name: str, days: int) -> None:
    """A certificate authority for the site: signs node and client certificates."""
    _crypto()
    from labbridge.cli import _tls

    d = _keydir(directory)
    for p in (d / "ca.crt", d / "ca.pem"):
        if p.exists():
            raise click.ClickException(f"{p} exists; a site keeps one CA (remove it first)")
    cert_pem, key_pem = _tls.make_ca(name, days)
    _write_private(d / "ca.pem", key_pem, 0o600)
    _write_private(d / "ca.crt", cert_pem, 0o644)
    click.echo(f"wrote {d / 'ca.crt'} (give it to every node and client) and {d / 'ca.pem'} "
               "(the CA key, mode 600: keep it off the lab network)")


@keys.command("tls-cert")
@click.argument("name")
@click.option("--dir", "directory", default="keys", show_default=True,
              help="The directory holding ca.crt and ca.pem; NAME.crt and NAME.pem go here.")
@click.option("--host", "hosts", multiple=True,
              help="A node's certificate: an IP address or DNS name clients reach it at "
                   "(repeatable). Without --host the certificate is a client's only.")
@click.option("--days", type=click.IntRange(1, 36500), default=825, show_default=True)
def tls_cert(name: str, directory: str, hosts: tuple[str, ...], days: int) -> None:
    """A certificate for NAME (a node or a client), signed by the site CA."""
    _crypto()
    from labbridge.cli import _tls

    d = _keydir(directory)
    ca_crt, ca_key = d / "ca.crt", d / "ca.pem"
    if not (ca_crt.exists() and ca_key.exists()):
        raise click.ClickException(f"no CA in {d}: run `labbridge keys tls-ca --dir {d}` first")
    crt, key = d / f"{name}.crt", d / f"{name}.pem"
    for p in (crt, key):
        if p.exists():
            raise click.ClickException(f"{p} exists; remove it to make a new one")
    cert_pem, key_pem = _tls.make_cert(name, list(hosts), days, ca_crt.read_bytes(),
                                       ca_key.read_bytes())
    _write_private(key, key_pem, 0o600)
    _write_private(crt, cert_pem, 0o644)
    click.echo(f"wrote {crt} and {key} (mode 600); its identity is {name!r}:")
    click.echo(f"  identities:\n    {name}: {{role: operator, cert: {name}}}")


def register(group: click.Group) -> None:
    group.add_command(keys)
