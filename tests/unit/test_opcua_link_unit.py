"""The OPC UA link's handling of publish responses, as pure logic: responses are built as
the asyncua client hands them over and fed to the link's callback (no server; the link
suite and the rig tests run it against real servers)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from asyncua import ua

from drivers.plc.nodemap import load_node_map
from drivers.plc.opcua_link import OpcUaPlcLink, _Session
from station.config import OpcUaSection

NMAP = load_node_map()
INPUTS = NMAP.inputs()
HANDLE = {sig.name: i for i, sig in enumerate(INPUTS, start=1)}


def make_link() -> tuple[OpcUaPlcLink, _Session, list[dict[str, Any]]]:
    section = OpcUaSection(security_policy="None", allow_insecure=True)
    link = OpcUaPlcLink(section, NMAP, heartbeat_period=0.1, clock=time.monotonic)
    session = _Session(client=None, generation=1)  # type: ignore[arg-type]
    session.handles = {i: sig for i, sig in enumerate(INPUTS, start=1)}
    session.subscription_id = 1
    link._session = session
    got: list[dict[str, Any]] = []
    link.on_inputs = lambda values, t: got.append(values)
    return link, session, got


def item(name: str, value: Any, status: int | None = None,
         variant: ua.VariantType | None = None) -> ua.MonitoredItemNotification:
    sig = NMAP.signals[name]
    vt = variant or getattr(ua.VariantType, sig.type)
    dv = ua.DataValue(ua.Variant(value, vt))
    if status is not None:
        dv.StatusCode = ua.StatusCode(ua.UInt32(status))
    return ua.MonitoredItemNotification(ClientHandle=HANDLE[name], Value=dv)


def response(*items: ua.MonitoredItemNotification) -> ua.PublishResult:
    result = ua.PublishResult()
    if items:
        change = ua.DataChangeNotification()
        change.MonitoredItems = list(items)
        result.NotificationMessage.NotificationData = [change]
    return result


def full_image(**values: Any) -> ua.PublishResult:
    wire = NMAP.encode({**NMAP.zero("in"), **values})
    return response(*(item(name, value) for name, value in wire.items()))


async def test_nothing_goes_out_before_every_input_has_come() -> None:
    link, session, got = make_link()
    feed = link._publish_callback(session)
    feed(response(item("plc_heartbeat", 1)))
    assert got == []
    feed(full_image(plc_heartbeat=2))
    assert len(got) == 1 and got[0]["plc_heartbeat"] == 2


async def test_a_keep_alive_delivers_the_same_image_again() -> None:
    link, session, got = make_link()
    feed = link._publish_callback(session)
    feed(full_image(lift_height=480.0))
    feed(response())
    assert len(got) == 2 and got[1] == got[0]
    assert link.stats.keepalives == 1


async def test_a_new_echo_waits_for_its_status() -> None:
    # Separate monitored items may be sampled from different PLC scans: a response with
    # the new command's echo but still the old command's "done" must not reach the core.
    link, session, got = make_link()
    feed = link._publish_callback(session)
    feed(full_image(cmd_ack_seq=4, cmd_status="done"))
    feed(response(item("cmd_ack_seq", 5)))
    assert (got[-1]["cmd_ack_seq"], got[-1]["cmd_status"]) == (4, "done")
    assert link.stats.held_echoes == 1
    feed(response(item("cmd_status", NMAP.contract.encode_enum("cmd_status", "busy"))))
    assert (got[-1]["cmd_ack_seq"], got[-1]["cmd_status"]) == (5, "busy")
    # with its status in the same response it goes out at once
    feed(response(item("cmd_ack_seq", 6),
                  item("cmd_status", NMAP.contract.encode_enum("cmd_status", "done"))))
    assert (got[-1]["cmd_ack_seq"], got[-1]["cmd_status"]) == (6, "done")
    # a command done within one scan (status unchanged): the echo goes out one response on
    feed(response(item("cmd_ack_seq", 7)))
    assert got[-1]["cmd_ack_seq"] == 6
    feed(response())
    assert (got[-1]["cmd_ack_seq"], got[-1]["cmd_status"]) == (7, "done")


@pytest.mark.parametrize("bad", ["status", "type", "length"])
async def test_a_bad_or_mistyped_input_withholds_the_image_and_names_the_node(
        bad: str) -> None:
    link, session, got = make_link()
    feed = link._publish_callback(session)
    feed(full_image())
    if bad == "status":
        wrong = item("lift_height", 480.0, status=ua.StatusCodes.BadSensorFailure)
    elif bad == "type":
        wrong = item("lift_height", "garbage", variant=ua.VariantType.String)
    else:
        wrong = item("bolt_torque", [1.0, 2.0])
    feed(response(wrong))
    feed(response())  # a keep-alive: still withheld
    assert len(got) == 1
    assert link.stats.poll_errors == 2 and link.stats.bad_values == 2
    name = "bolt_torque" if bad == "length" else "lift_height"
    assert name in (link.stats.last_error or "")
    assert NMAP.signals[name].address in (link.stats.last_error or "")
    good = NMAP.encode({name: [3.0] * 12 if bad == "length" else 470.0})[name]
    feed(response(item(name, good)))
    assert len(got) == 2


async def test_a_response_of_a_session_given_up_is_ignored() -> None:
    link, session, got = make_link()
    feed = link._publish_callback(session)
    feed(full_image())
    link._session = _Session(client=None, generation=2)  # type: ignore[arg-type]
    feed(full_image(lift_height=100.0))
    assert len(got) == 1  # nothing from before a reconnect


async def test_the_server_ending_the_subscription_loses_the_session() -> None:
    link, session, got = make_link()
    feed = link._publish_callback(session)
    result = ua.PublishResult()
    change = ua.StatusChangeNotification(Status=ua.StatusCode(
        ua.UInt32(ua.StatusCodes.BadTimeout)))
    result.NotificationMessage.NotificationData = [change]
    feed(result)
    assert session.lost.is_set() and "BadTimeout" in session.lost_reason
    assert got == []


def test_a_subscription_is_judged_dead_no_sooner_than_the_inputs_go_stale() -> None:
    """The silence limit is the staleness ([plc] stale_after_s, from the configuration),
    unless the keep-alive the server granted is so slow that 1.5 of its periods are
    longer."""
    from drivers.plc.contract import load_contract
    from station.config import PlcSection

    plc = PlcSection(protocol="opcua", opcua=OpcUaSection(security_policy="None",
                                                          allow_insecure=True),
                     stale_after_s=0.7)
    link = OpcUaPlcLink.from_config(plc, plc.opcua, load_contract(), time.monotonic)
    assert link.stale_after == 0.7
    assert link.silence_limit(0.1) == 0.7  # the default 10 ms x 10 keep-alive
    assert link.silence_limit(1.0) == 1.5  # a server that granted a 1 s keep-alive
