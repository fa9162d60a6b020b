"""ZeroMQ setup errors are one-line BusErrors naming the endpoint and what to do (issue 15
item 3; ADR 0123), good enough for `labbridge serve` to print as they are."""

from __future__ import annotations

import socket

import pytest

from labbridge.bus.notifier import Notifier
from labbridge.bus.publisher import Publisher
from labbridge.bus.sockets import BusError
from labbridge.bus.subscriber import Subscriber
from labbridge.node.node import StartError, build_node


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text, text
    return text


async def test_pub_port_clash_names_port_and_remedy():
    first = Notifier("127.0.0.1", 0, heartbeat=None, name="notifier 'bus'")
    await first.start()
    try:
        port = first.port
        second = Notifier("127.0.0.1", port, rep_port=0, heartbeat=None,
                          name="notifier 'bus'")
        with pytest.raises(BusError) as info:
            await second.start()
    finally:
        await first.stop()
    text = one_line(info.value)
    assert text.startswith(f"notifier 'bus' PUB: cannot listen on tcp://127.0.0.1:{port}: ")
    assert "Address already in use" in text
    assert f"another program (perhaps another labbridge node) is using port {port}" in text
    assert "port: in the node file" in text


async def test_rep_port_clash_names_rep_port_and_frees_the_pub_port():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    rep = taken.getsockname()[1]
    try:
        n = Notifier("127.0.0.1", 0, rep_port=rep, heartbeat=None, name="notifier 'bus'")
        with pytest.raises(BusError) as info:
            await n.start()
    finally:
        taken.close()
    text = one_line(info.value)
    assert f"notifier 'bus' REP: cannot listen on tcp://127.0.0.1:{rep}" in text
    assert "rep_port: in the node file" in text
    assert not n.publisher.is_open  # nothing half-started is left behind


def test_address_not_on_this_machine():
    pub = Publisher("192.0.2.1", 0, name="notifier 'bus' PUB")   # TEST-NET-1
    with pytest.raises(BusError) as info:
        pub.open()
    text = one_line(info.value)
    assert "tcp://192.0.2.1:0" in text and "not an address of this machine" in text


def test_malformed_connect_endpoints():
    with pytest.raises(BusError) as info:
        Publisher(None, connect=["tcp://a b:5555"], name="forwarder").open()
    assert "forwarder: cannot connect to tcp://a b:5555" in one_line(info.value)


async def test_subscriber_with_malformed_endpoint():
    sub = Subscriber("tcp://a b:5555", name="watch")
    with pytest.raises(BusError) as info:
        await sub.start()
    assert "watch: cannot connect to tcp://a b:5555: Invalid argument" in one_line(info.value)
    await sub.stop()


async def test_node_with_a_taken_notifier_port_fails_with_the_service_name(tmp_path):
    holder = Publisher("127.0.0.1", 0)
    holder.open()
    try:
        cfg = tmp_path / "node.yaml"
        cfg.write_text(f"node: lab\nservices:\n  - {{kind: notifier, name: bus, "
                       f"host: 127.0.0.1, port: {holder.port}}}\n")
        node = build_node(cfg)
        with pytest.raises(StartError) as info:  # names the node and the part; cause chained
            await node.start()
    finally:
        holder.close()
    assert isinstance(info.value.cause, BusError)
    text = one_line(info.value.cause)
    assert text.startswith(f"notifier 'bus' PUB: cannot listen on tcp://127.0.0.1:{holder.port}")
    assert one_line(info.value) == f"cannot start node lab: service bus: {text}"  # one remedy
