"""F-HTTP, the legacy RemoteHardwareServer's HTTP GET form (issue 20), sans-I/O.

The request rules and the reply shape are those of Python 2.7's BaseHTTPRequestHandler, which
the real legacy server's HTTP face used (NMGRL/pychron tag v2.4,
pychron/messaging/directory_server.py: ``DirectoryHandler(BaseHTTPRequestHandler)``, started by
pychron/managers/remote_hardware_server_manager.py from ``rhs.cfg [DirectoryServer]``):
python/cpython Lib/BaseHTTPServer.py (2.7 branch), ``parse_request`` (request line: three
words with an ``HTTP/x.y`` version, or two for HTTP/0.9 GET; the 400 / 505 cases),
``handle_one_request`` (501 for a method with no ``do_`` handler), ``send_response`` /
``send_header`` / ``end_headers`` (``protocol_version = "HTTP/1.0"`` status line, ``Server``
and ``Date``; nothing but the body for HTTP/0.9), ``send_error`` (the message as the reason,
``Connection: close``, no body for HEAD).
"""

from __future__ import annotations

import pytest

from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.pychron.httpget import (
    MAX_HEADERS,
    HttpRequest,
    HttpRequestError,
    HttpRequestReader,
    error_response,
    looks_like_http,
    response,
)

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def read(data: bytes, *, chunk: int | None = None, max_size: int = 64 * 1024) -> HttpRequest:
    r = HttpRequestReader(max_size)
    step = chunk or len(data) or 1
    ev: object = NEED_DATA
    for i in range(0, len(data), step):
        r.receive_data(data[i:i + step])
        ev = r.next_event()
        if ev is not NEED_DATA:
            break
    assert isinstance(ev, HttpRequest), ev
    return ev


def refused(data: bytes) -> HttpRequestError:
    r = HttpRequestReader()
    with pytest.raises(HttpRequestError) as err:
        r.receive_data(data)
        r.next_event()
    return err.value


@pytest.mark.parametrize(("first", "verdict"), [
    (b"GET /Open%20A HTTP/1.0\r\n", True), (b"GET ", True), (b"HEAD /", True),
    (b"POST /x HTTP/1.1", True), (b"G", None), (b"GE", None), (b"GET", None), (b"HEA", None),
    (b"GetValveState A", False), (b"Open A", False), (b"GETX", False), (b"get /", False),
    (b"{0008}Open A", False), (b"{\"command\": \"Open\"}", False), (b"", None),
])
def test_what_is_taken_for_http(first, verdict):
    assert looks_like_http(first) is verdict


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_a_get_request_whatever_the_chunks(chunk):
    req = read(b"GET /Open%20A HTTP/1.1\r\nHost: 127.0.0.1:1061\r\nUser-Agent: curl/8\r\n"
               b"Accept: */*\r\n\r\n", chunk=chunk)
    assert (req.method, req.target, req.version) == ("GET", "/Open%20A", "HTTP/1.1")
    assert req.header("HOST") == "127.0.0.1:1061" and req.header("accept") == "*/*"
    assert req.command() == "Open A"


def test_bare_lf_lines_and_a_folded_header():
    req = read(b"GET /GetValveStates HTTP/1.0\nX-Note: one\n two\n\n")
    assert req.header("x-note") == "one two" and req.command() == "GetValveStates"


@pytest.mark.parametrize(("target", "command"), [
    ("/Open%20A", "Open A"), ("/GetValveState%20A?x=1#top", "GetValveState A"),
    ("/Open+A", "Open+A"),  # unquote, not unquote_plus (as the real handler)
    ("/", ""), ("/GetPressure%20IG%20", "GetPressure IG"), ("/caf%C3%A9", "café"),
])
def test_the_command_is_the_decoded_path(target, command):
    assert HttpRequest("GET", target, "HTTP/1.0").command() == command


@pytest.mark.parametrize("target", ["/Open%20A%0D%0AClose%20B", "/Open%00A", "/x%0A"])
def test_control_characters_in_the_path_are_a_bad_request(target):
    with pytest.raises(HttpRequestError) as err:
        HttpRequest("GET", target, "HTTP/1.0").command()
    assert err.value.status == 400


def test_http_09_is_one_line_and_its_reply_is_the_body_alone():
    req = read(b"GET /GetValveState%20A\r\n")
    assert (req.version, req.command(), req.headers) == ("HTTP/0.9", "GetValveState A", ())
    assert response(200, b"False\n", version=req.version, date=DATE, server="s") == b"False\n"


@pytest.mark.parametrize(("line", "status", "reason"), [
    (b"GET / FOO/1.0", 400, "Bad request version ('FOO/1.0')"),
    (b"GET / HTTP/1", 400, "Bad request version ('HTTP/1')"),
    (b"GET / HTTP/1.x", 400, "Bad request version ('HTTP/1.x')"),
    (b"GET / HTTP/2.0", 505, "Invalid HTTP Version (2.0)"),
    (b"POST /Open%20A", 400, "Bad HTTP/0.9 request type ('POST')"),
    (b"GET / HTTP/1.0 extra", 400, "Bad request syntax ('GET / HTTP/1.0 extra')"),
    (b"GET /Open A HTTP/1.0", 400, "Bad request syntax ('GET /Open A HTTP/1.0')"),
    (b"POST /Open%20A HTTP/1.0", 501, "Unsupported method ('POST')"),
    (b"HEAD /Open%20A HTTP/1.0", 501, "Unsupported method ('HEAD')"),
])
def test_request_line_errors_are_base_http_servers(line, status, reason):
    err = refused(line + b"\r\n\r\n")
    assert (err.status, err.reason) == (status, reason)


def test_a_header_line_without_a_colon_is_a_bad_request():
    assert refused(b"GET / HTTP/1.0\r\nnot a header\r\n\r\n").status == 400


def test_limits():
    r = HttpRequestReader(100)
    r.receive_data(b"GET /" + b"x" * 90)
    assert r.next_event() is NEED_DATA
    with pytest.raises(HttpRequestError) as err:
        r.receive_data(b"y" * 10)
    assert err.value.status == 414
    r = HttpRequestReader(100)
    r.receive_data(b"GET / HTTP/1.0\r\nA: 1\r\n")
    assert r.next_event() is NEED_DATA
    with pytest.raises(HttpRequestError) as err:
        r.receive_data(b"B: " + b"2" * 80)
    assert err.value.status == 431
    many = b"GET / HTTP/1.0\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert refused(many + b"\r\n").status == 431
    read(b"GET / HTTP/1.0\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS))
         + b"\r\n")


def test_half_close_ends_a_request_once_its_line_is_whole():
    r = HttpRequestReader()
    r.receive_data(b"GET /Open%20A HTTP/1.0\r\nHost: x")
    assert r.next_event() is NEED_DATA
    req = r.receive_eof()
    assert req is not None and req.command() == "Open A"
    r = HttpRequestReader()
    r.receive_data(b"GET /Open%20A")
    req = r.receive_eof()
    assert req is not None and req.version == "HTTP/0.9"  # "GET <path>": a 0.9 line
    r = HttpRequestReader()
    r.receive_data(b"GET /Open%20A HT")  # cut in its version
    with pytest.raises(HttpRequestError) as err:
        r.receive_eof()
    assert err.value.reason == "Bad request version ('HT')"


def test_reply_is_base_http_servers_shape():
    got = response(200, b"OK\n", version="HTTP/1.1", date=DATE, server="labbridge/0.1.0")
    assert got == (b"HTTP/1.0 200 OK\r\nServer: labbridge/0.1.0\r\n"
                   b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                   b"Content-type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nOK\n")


def test_error_reply_is_send_errors_shape():
    err = HttpRequestError(501, "Unsupported method ('POST')", version="HTTP/1.0",
                           method="POST")
    got = error_response(err, date=DATE, server="s")
    body = b"501 Not Implemented: Unsupported method ('POST')\n"
    assert got == (b"HTTP/1.0 501 Unsupported method ('POST')\r\nServer: s\r\n"
                   b"Date: " + DATE.encode() + b"\r\nContent-type: text/plain; charset=utf-8\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    head = HttpRequestError(403, "no", method="HEAD")
    assert error_response(head, date=DATE, server="s").endswith(b"\r\n\r\n")  # no body


def test_a_reason_cannot_inject_header_lines():
    err = HttpRequestError(400, "Bad request syntax ('a\r\nSet-Cookie: x')")
    head = error_response(err, date=DATE, server="s").split(b"\r\n\r\n")[0]
    assert b"\r\nSet-Cookie" not in head
