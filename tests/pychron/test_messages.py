"""Request grammar, reply vocabulary and error texts."""

from __future__ import annotations

import pytest

from labbridge.protocol.pychron.messages import (
    ErrorCode,
    PychronError,
    RequestError,
    error_text,
    format_json_request,
    format_request,
    parse_error_reply,
    parse_request,
    render_reply,
    to_bool,
)


@pytest.mark.parametrize(
    ("text", "command", "args", "arg_text"),
    [
        ("GetValveStates", "GetValveStates", (), ""),
        ("Open A", "Open", ("A",), "A"),
        ("Open A\r\n", "Open", ("A",), "A"),
        ("GetPressure ctrl,IG", "GetPressure", ("ctrl", "IG"), "ctrl,IG"),
        ("Set JanMiniboneFlag 1", "Set", ("JanMiniboneFlag 1",), "JanMiniboneFlag 1"),
        ("Open  A", "Open", (" A",), " A"),
        ("Open A\rClose A", "Open", ("A\rClose A",), "A\rClose A"),
        ("  GetValveStates \r\n", "GetValveStates", (), ""),
    ],
)
def test_text_requests(text, command, args, arg_text):
    req = parse_request(text)
    assert (req.command, req.args, req.arg_text) == (command, args, arg_text)
    assert not req.is_json


def test_json_request():
    req = parse_request('{"command": "Close", "value": "A"}')
    assert req.command == "Close" and req.is_json and req.single == "A"
    assert req.arg("value") == "A"
    req2 = parse_request('{"command": "GetPressure", "controller": "c", "gauge": "IG"}')
    assert req2.arg("controller") == "c" and req2.arg("gauge") == "IG"


@pytest.mark.parametrize("text", ["{bad json", '{"value": 1}', "[1, 2]", "", "   "])
def test_unparseable_requests_give_error_003(text):
    with pytest.raises(RequestError) as info:
        parse_request(text)
    assert info.value.reply.code == ErrorCode.INVALID_COMMAND
    assert info.value.reply.text == f"ERROR 003 : invalid command: {text.strip()}"


def test_render_reply():
    assert render_reply(True) == "OK"
    assert render_reply(False) == "False"
    assert render_reply(None) == "No Response"
    assert render_reply(12) == "12"
    assert render_reply(0.5) == "0.5"
    assert render_reply(PychronError(ErrorCode.INVALID_VALVE, "Z")) == (
        "ERROR 005 : Z is not a registered valve name")


def test_error_texts():
    assert error_text(ErrorCode.INVALID_ARGUMENTS, "Open", "Z") == (
        "ERROR 004 : invalid arguments: Open Z")
    assert error_text(ErrorCode.INVALID_ARGUMENTS, "Open", "") == (
        "ERROR 004 : invalid arguments: Open")
    assert error_text(ErrorCode.VALVE_ACTUATION, "", "open") == (
        "ERROR 015 : Valve  failed to actuate open")
    assert error_text(ErrorCode.SECURITY, "10.1.2.3") == (
        "ERROR 013 : Not an approved ip address 10.1.2.3")
    assert error_text(ErrorCode.PYCHRON_COMM, "/tmp/x", "refused") == (
        "ERROR 011 : could not communicate with pychron through /tmp/x. socket.error = refused")
    assert parse_error_reply("ERROR 005 : Z is not a registered valve name") == (
        5, "Z is not a registered valve name")
    assert parse_error_reply("OK") is None


def test_formatting_and_to_bool():
    assert format_request("GetPressure", "c", "IG") == "GetPressure c,IG"
    assert format_request("GetValveStates") == "GetValveStates"
    assert format_json_request("Open", value="A") == '{"command": "Open", "value": "A"}'
    assert to_bool("OK") is True and to_bool("ok") is True and to_bool("False") is False
    assert to_bool("ERROR 004 : x") is None
