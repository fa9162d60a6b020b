"""F-HTTP: the HTTP/1.0 ``GET`` form of a legacy RemoteHardwareServer request (issue 20).

What the real legacy server had (``NMGRL/pychron`` tag ``v2.4``):
``pychron/managers/remote_hardware_server_manager.py`` starts, when ``rhs.cfg`` has
``[DirectoryServer] enabled``, a ``DirectoryServer`` (``pychron/messaging/directory_server.py``):
a ``BaseHTTPServer.HTTPServer`` whose handler (``DirectoryHandler``) answers ``GET`` and
``HEAD`` with the files under a configured root. That is the only HTTP in the real
RemoteHardwareServer; its commands went over raw TCP/UDP (spec pychron.md section 10).

labbridge keeps that wire form, the one of Python 2.7's ``BaseHTTPRequestHandler``
(``python/cpython`` ``Lib/BaseHTTPServer.py``, 2.7 branch: ``parse_request``,
``send_response``, ``send_error``; ``protocol_version = "HTTP/1.0"``), and not what it served:
the path is a command for the relay, never a file (nothing reachable from the network reads
files). So:

* request line ``GET <path> HTTP/<major>.<minor>`` then header lines up to an empty line; a
  two-word line ``GET <path>`` is an HTTP/0.9 request (no headers; its reply is the body
  alone, with no status line or headers). As ``parse_request``: a third word not starting
  ``HTTP/``, or not two integers around one dot, is ``400 Bad request version``; a version
  of 2.0 or more ``505``; a two-word line with another method ``400 Bad HTTP/0.9 request
  type``; any other number of words ``400 Bad request syntax``; a method other than ``GET``
  ``501 Unsupported method``. [lb] those errors always carry an HTTP/1.0 status line (the real
  one, still at its HTTP/0.9 default while parsing, sent a bare HTML body) and a plain-text
  body.
* the command is the path, without its query (``?...``) and fragment (``#...``), without the
  leading ``/``, percent-decoded (``GET /Open%20A HTTP/1.0`` is ``Open A``), as
  ``DirectoryHandler._translate_path`` took the path apart;
* reply ``HTTP/1.0 200 OK``, ``Server``, ``Date``, ``Content-type``, ``Content-Length``, an
  empty line and the body, then the server closes the connection (HTTP/1.0: one request per
  connection, like every legacy face).

Sans-I/O like every framer: :class:`HttpRequestReader` collects one request (bounded), the
``*_response`` functions make the bytes to send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from labbridge.protocol.base import NEED_DATA, ProtocolError, _NeedData

#: Largest request (request line plus headers) a reader takes.
MAX_HTTP_REQUEST: Final = 64 * 1024
#: Most header lines in one request.
MAX_HEADERS: Final = 100

#: Reason phrases of the statuses this form uses (as ``BaseHTTPRequestHandler.responses``).
REASONS: Final = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
    414: "Request-URI Too Long", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported",
}

#: Request methods: bytes that begin with one of these (and a space) are an HTTP request.
_METHODS: Final = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
                   b"CONNECT")
_STARTS: Final = tuple(m + b" " for m in _METHODS)
_LONGEST: Final = max(len(s) for s in _STARTS)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def looks_like_http(first: bytes | bytearray) -> bool | None:
    """Whether a connection whose first bytes are ``first`` speaks HTTP: True when they begin
    with a request method and a space (``GET ``), False when they cannot, None when too few
    bytes have come to tell. No Pychron command begins with an upper-case HTTP method and a
    space, so the plain form is never taken for HTTP."""
    head = bytes(first[:_LONGEST])
    if any(head.startswith(s) for s in _STARTS):
        return True
    if any(s.startswith(head) for s in _STARTS):
        return None
    return False


class HttpRequestError(ProtocolError):
    """A request this form cannot take: ``status`` and ``message`` are the reply's."""

    kind = "http"

    def __init__(self, status: int, message: str, *, version: str = "HTTP/1.0",
                 method: str | None = None) -> None:
        super().__init__(f"{status} {message}", fatal=True)
        self.status = status
        self.reason = message
        #: The request's version and method when known (the error reply's form depends on
        #: them: no status line for HTTP/0.9, no body for HEAD).
        self.version = version
        self.method = method


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    #: The request target as sent (``/Open%20A``).
    target: str
    #: ``HTTP/1.0``, ``HTTP/1.1``...; ``HTTP/0.9`` for a two-word request line.
    version: str
    #: Header lines in order, names lower-cased, values stripped.
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (any case), or None."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def command(self) -> str:
        """The relay request the path carries (see the module docstring);
        :class:`HttpRequestError` 400 if it holds control characters (CR, LF, NUL...)."""
        path = self.target.split("?", 1)[0].split("#", 1)[0]
        text = unquote(path[1:] if path.startswith("/") else path, errors="replace")
        if _CONTROL.search(text):
            raise HttpRequestError(400, "control characters in the request path",
                                   version=self.version, method=self.method)
        return text.strip()


class HttpRequestReader:
    """Collects one HTTP request (request line and headers; a body is never read).

    The request ends at its empty line, or at the end of the request line for HTTP/0.9, or at
    the peer's half-close once the request line is whole. At most ``max_size`` bytes and
    :data:`MAX_HEADERS` header lines; beyond, :class:`HttpRequestError` 414 (request line) or
    431 (headers). Work is linear in the bytes received, whatever the chunk sizes.
    """

    def __init__(self, max_size: int = MAX_HTTP_REQUEST) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scanned = 0  # bytes searched for LF
        self._lines: list[bytes] = []  # complete lines so far (without their CR/LF)
        self._start = 0  # offset of the current (incomplete) line
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            return
        if len(self._buf) + len(data) > self.max_size:
            self._done = True
            self._buf = bytearray()
            if not self._lines:
                raise HttpRequestError(414, f"request line longer than {self.max_size} bytes")
            raise HttpRequestError(431, f"request longer than {self.max_size} bytes")
        self._buf += data

    def next_event(self) -> HttpRequest | _NeedData:
        if self._done:
            return NEED_DATA
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(buf)
                return NEED_DATA
            line = bytes(buf[self._start:end]).removesuffix(b"\r")
            self._scanned = self._start = end + 1
            if not self._lines:
                if not line.strip():
                    continue  # blank lines before the request line are skipped
                self._lines.append(line)
                if len(line.split()) == 2:  # HTTP/0.9: no headers follow
                    return self._finish()
                continue
            if not line:
                return self._finish()
            self._lines.append(line)
            if len(self._lines) > MAX_HEADERS + 1:
                self._done = True
                self._buf = bytearray()
                raise HttpRequestError(431, f"more than {MAX_HEADERS} header lines")

    def receive_eof(self) -> HttpRequest | None:
        """The peer half-closed: the request as it stands (None if nothing came)."""
        if self._done:
            return None
        if not self._lines:
            rest = bytes(self._buf[self._start:]).strip()
            if not rest:
                self._done = True
                return None
            self._lines.append(rest)
        return self._finish()

    def _finish(self) -> HttpRequest:
        self._done = True
        self._buf = bytearray()
        first, *rest = self._lines
        req = _request_line(first.decode("latin-1"))
        if req.version == "HTTP/0.9":
            return req
        return HttpRequest(req.method, req.target, req.version, _headers(rest, req))


def _request_line(line: str) -> HttpRequest:
    """``BaseHTTPRequestHandler.parse_request``'s rules for the request line (2.7)."""
    words = line.split()
    if len(words) == 3:
        method, target, version = words
        if not version.startswith("HTTP/"):
            raise HttpRequestError(400, f"Bad request version ({version!r})", method=method)
        number = version.split("/", 1)[1].split(".")
        try:
            if len(number) != 2:
                raise ValueError
            major, minor = int(number[0]), int(number[1])
        except ValueError:
            raise HttpRequestError(400, f"Bad request version ({version!r})",
                                   method=method) from None
        if (major, minor) >= (2, 0):
            raise HttpRequestError(505, f"Invalid HTTP Version ({version.split('/', 1)[1]})",
                                   method=method)
        req = HttpRequest(method, target, f"HTTP/{major}.{minor}")
    elif len(words) == 2:
        method, target = words
        if method != "GET":
            raise HttpRequestError(400, f"Bad HTTP/0.9 request type ({method!r})",
                                   method=method)
        req = HttpRequest(method, target, "HTTP/0.9")
    else:
        raise HttpRequestError(400, f"Bad request syntax ({line[:200]!r})")
    if req.method != "GET":
        raise HttpRequestError(501, f"Unsupported method ({req.method!r})",
                               version=req.version, method=req.method)
    return req


def _headers(lines: list[bytes], req: HttpRequest) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and out:  # a folded continuation of the previous value
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpRequestError(400, f"Bad header line ({line[:80]!r})",
                                   version=req.version, method=req.method)
        out.append((name.lower(), value.strip()))
    return tuple(out)


# -- replies ----------------------------------------------------------------------------------

def response(status: int, body: bytes, *, version: str, date: str, server: str,
             content_type: str = "text/plain; charset=utf-8", head: bool = False,
             close: bool = False, reason: str | None = None) -> bytes:
    """The reply to a request of ``version``: status line (``HTTP/1.0`` whatever the
    request's, as ``protocol_version``), ``Server``, ``Date``, ``Content-type``,
    ``Content-Length`` (and ``Connection: close`` if ``close``), an empty line, the body
    (none for ``head``). An HTTP/0.9 request gets the body alone."""
    if version == "HTTP/0.9":
        return b"" if head else body
    lines = [f"HTTP/1.0 {status} {reason or REASONS.get(status, '')}", f"Server: {server}",
             f"Date: {date}", f"Content-type: {content_type}", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    text = "".join(f"{_clean(line)}\r\n" for line in lines) + "\r\n"
    return text.encode("latin-1", "replace") + (b"" if head else body)


def error_response(exc: HttpRequestError, *, date: str, server: str) -> bytes:
    """The reply to a request this form refuses (``send_error``'s shape: the status with its
    message, ``Connection: close``; the body is one plain line saying why)."""
    body = f"{exc.status} {REASONS.get(exc.status, 'Error')}: {exc.reason}\n"
    return response(exc.status, body.encode("utf-8", "replace"), version=exc.version,
                    date=date, server=server, head=exc.method == "HEAD", close=True,
                    reason=exc.reason)


def _clean(line: str) -> str:
    """A header or status line with no CR/LF of the peer's making in it."""
    return _CONTROL.sub(" ", line)
