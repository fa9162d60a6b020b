"""The fault scenarios of issue 16: one id per row of docs/faults.md.

Each test records its outcome under one of these ids (tests/faults/conftest.py ``outcome``);
``python -m tests.faults.report`` renders the table from those records. A test checks that
docs/faults.md has exactly these rows, so the table cannot drift from the suite.
"""

from __future__ import annotations

#: id -> (component, fault injected)
SCENARIOS: dict[str, tuple[str, str]] = {
    "valve-partition-before-request": (
        "Pychron client, `RemoteValves.open`",
        "partition before `Open A` is sent; healed once the client reports the lost reply"),
    "valve-partition-before-request-persists": (
        "Pychron client, `RemoteValves.open`",
        "partition before `Open A` is sent; not healed until the call has ended"),
    "valve-partition-after-request": (
        "Pychron client, `RemoteValves.open`",
        "partition after `Open A` reached the valve, before the reply; healed once the client "
        "reports the lost reply"),
    "valve-partition-after-request-persists": (
        "Pychron client, `RemoteValves.open`",
        "partition after `Open A` reached the valve, before the reply; not healed until the "
        "call has ended"),
    "valve-reset-during-actuation": (
        "Pychron client, `RemoteValves.open`",
        "TCP reset of the command connection while `Open A` is at the valve"),
    "pipelined-loss-5": (
        "Pychron client, pipelined braced requests",
        "5 % random packet loss each way while 24 valves are each opened and closed 6 times "
        "(`RemoteValves`, 1 s timeout) with 3 queries beside each actuation, all pipelined on "
        "one connection"),
    "pipelined-loss-30": (
        "Pychron client, pipelined braced requests",
        "30 % random packet loss each way, same load as above"),
    "monitor-partition": (
        "StatusMonitor",
        "partition of the valve node; a valve changed on the node meanwhile"),
    "bus-recorder-partition": (
        "Recorder (bus subscriber) and `labbridge history`",
        "partition between the node's notifier and the recorder"),
    "bus-publisher-reboot": (
        "Bus subscriber",
        "partition, then the publisher's host is rebooted (its kernel forgets the connection)"),
    "pymodaq-reset-during-frame": (
        "PyMoDAQ client (camera, G3 GRABBER)",
        "TCP reset while a 2 MiB frame is on a slowed link"),
    "hexrot-telemetry-stall": (
        "hexrotcomm generation-D client (`HexrotController`)",
        "partition: telemetry stops, the TCP connection stays open"),
    "web-slow-link": (
        "web dashboard, a page's WebSocket",
        "the page's link slowed to 32 kbit/s (tc tbf) under a fast stream of values"),
    "web-page-outage": (
        "web dashboard page in Chromium",
        "partition of the valve node the page shows; a valve changed on the node meanwhile"),
}
