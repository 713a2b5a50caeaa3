"""J1939-21 connection mode (RTS/CTS): the station's responder and a pack's originator,
pure, with the time passed in."""

from __future__ import annotations

import pytest

from drivers.bms import j1939_tp as tp
from drivers.bms.j1939_tp import ConnectionReceiver, ConnectionSender, Drop

ST, PACK, PACK2 = 0x56, 0x80, 0x81
PGN = 0xFF16
PAYLOAD = bytes(range(241))  # 35 packets
SIZES = {PGN: len(PAYLOAD), 0xFF17: 121}


def rx(**kw: object) -> tuple[ConnectionReceiver, list[Drop]]:
    drops: list[Drop] = []
    kw.setdefault("sizes", SIZES)
    return ConnectionReceiver(ST, on_drop=drops.append, **kw), drops  # type: ignore[arg-type]


def control(frame: tp.Frame) -> int:
    return frame[1][0]


def is_cm(frame: tp.Frame, sa: int, da: int) -> bool:
    return frame[0] == tp._cm_id(tp.TP_CM_PGN, sa, da)


def run(sender: ConnectionSender, receiver: ConnectionReceiver, t: float = 0.0,
        lose: set[int] | None = None, step: float = 0.001) -> tp.Transfer | None:
    """Drive one transfer to its end; packets numbered in `lose` are lost the first time."""
    lose = set(lose or ())
    result = None
    to_rx = sender.start(t)
    for _ in range(10000):
        to_tx: list[tp.Frame] = []
        for can_id, data in to_rx:
            pgn = (can_id >> 8) & 0x3FF00
            done, frames = receiver.feed(pgn, sender.sa, data, t)
            result = result or done
            to_tx += frames
        to_rx = []
        for _, data in to_tx:
            to_rx += sender.feed(data, t)  # an abort back, if any
        while (frame := sender.next_packet(t)) is not None:
            t += step
            if frame[1][0] in lose:
                lose.discard(frame[1][0])
                continue
            to_rx.append(frame)
        if sender.finished and not to_rx:
            return result
        if not to_rx and not to_tx:
            t += 0.1
            to_rx = sender.poll(t)
            for f in receiver.poll(t):
                to_rx += sender.feed(f[1], t)
    raise AssertionError("no end")


def test_frame_layouts() -> None:
    cid, data = tp.rts_frame(PGN, 241, PACK, ST, 16)
    assert cid == 0x1CEC5680 and data == bytes([16, 241, 0, 35, 16, 0x16, 0xFF, 0])
    assert tp.cts_frame(PGN, 4, 9, ST, PACK)[1] == bytes([17, 4, 9, 255, 255, 0x16, 0xFF, 0])
    assert tp.cts_frame(PGN, 0, 9, ST, PACK)[1][:3] == bytes([17, 0, 255])  # a hold
    assert tp.eoma_frame(PGN, 241, ST, PACK)[1] == bytes([19, 241, 0, 35, 255, 0x16, 0xFF, 0])
    assert tp.abort_frame(PGN, "timeout", ST, PACK)[1] == bytes([255, 3, 255, 255, 255,
                                                                  0x16, 0xFF, 0])
    cid, data = tp.dt_frame(PAYLOAD, 35, PACK, ST)
    assert cid == 0x1CEB5680 and data == bytes([35]) + PAYLOAD[238:] + b"\xff" * 4
    assert {c: n for c, n in tp.ABORT_REASONS.items() if c < 10} == {
        1: "busy", 2: "resources", 3: "timeout", 4: "cts_while_sending",
        5: "max_retransmit", 6: "unexpected_dt", 7: "bad_sequence",
        8: "duplicate_sequence", 9: "too_large"}


def test_a_whole_transfer_in_windows_of_16() -> None:
    r, drops = rx()
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
    got = run(s, r)
    assert got is not None and got.payload == PAYLOAD and got.pgn == PGN and got.source == PACK
    assert s.state == "done" and s.sent_packets == 35
    assert r.stats["cm_cts_sent"] == 3 and r.stats["cm_eoma_sent"] == 1  # 16 + 16 + 3
    assert r.stats["cm_completed"] == 1 and r.open_connections == 0 and drops == []


def test_cts_respects_the_originators_limit_and_the_sizes() -> None:
    r, _ = rx(window=16)
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST, 5)[1], 0.0)
    assert out == [tp.cts_frame(PGN, 5, 1, ST, PACK)]
    r2, _ = rx()
    _, out = r2.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(0xFF17, 121, PACK, ST)[1], 0.0)
    assert out == [tp.cts_frame(0xFF17, 16, 1, ST, PACK)]
    for size in (9, 240, 1785):
        s = ConnectionSender(0xFF99, bytes(size), PACK, ST)
        r3, _ = rx(sizes=None)
        assert (t := run(s, r3)) is not None and len(t.payload) == size


@pytest.mark.parametrize("size,reason", [(1786, "too_large"), (240, "other")])
def test_a_size_not_taken_is_aborted(size: int, reason: str) -> None:
    r, _drops = rx()
    data = bytearray(tp.rts_frame(PGN, min(size, 1785), PACK, ST)[1])
    data[1:3] = size.to_bytes(2, "little")
    data[3] = tp.packets_for(size) if size <= 1785 else 255
    _, out = r.feed(tp.TP_CM_PGN, PACK, bytes(data), 0.0)
    assert out == [tp.abort_frame(PGN, reason, ST, PACK)]
    assert r.stats[f"abort_sent_{reason}"] == 1 and r.open_connections == 0


def test_an_unknown_pgn_and_a_bad_packet_count_are_aborted() -> None:
    r, _drops = rx()
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(0xFF99, 50, PACK, ST)[1], 0.0)
    assert out == [tp.abort_frame(0xFF99, "other", ST, PACK)]
    data = bytearray(tp.rts_frame(PGN, 241, PACK, ST)[1])
    data[3] = 34
    _, out = r.feed(tp.TP_CM_PGN, PACK, bytes(data), 0.0)
    assert out == [tp.abort_frame(PGN, "other", ST, PACK)]
    assert r.stats["abort_sent_other"] == 2


def test_t2_after_cts_aborts_with_timeout() -> None:
    r, drops = rx(t2_s=1.25)
    r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST)[1], 0.0)
    assert r.next_deadline() == 1.25
    assert r.poll(1.24) == []
    assert r.poll(1.26) == [tp.abort_frame(PGN, "timeout", ST, PACK)]
    assert r.stats["abort_sent_timeout"] == 1 and "T2" in drops[-1].detail


def test_t1_between_packets_aborts_with_timeout() -> None:
    r, drops = rx(t1_s=0.75)
    r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST)[1], 0.0)
    r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.1)
    assert r.next_deadline() == pytest.approx(0.85)
    assert r.poll(0.84) == []
    assert r.poll(0.86) == [tp.abort_frame(PGN, "timeout", ST, PACK)]
    assert "T1" in drops[-1].detail and "packet 2 of 35" in drops[-1].detail


def test_hold_beyond_max_active_repeated_at_th_and_resumed() -> None:
    r, _ = rx(max_active=1, th_s=0.5)
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST)[1], 0.0)
    assert out == [tp.cts_frame(PGN, 16, 1, ST, PACK)]
    _, out = r.feed(tp.TP_CM_PGN, PACK2, tp.rts_frame(0xFF17, 121, PACK2, ST)[1], 0.0)
    assert out == [tp.cts_frame(0xFF17, 0, 0, ST, PACK2)] and r.stats["cm_holds_sent"] == 1
    # a DT from the held originator is not asked for
    # (tested separately); the hold is repeated within Th while PACK transfers
    for i in range(1, 17):
        r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, i, PACK, ST)[1], 0.03 * i)
    assert r.poll(0.51) == [tp.cts_frame(0xFF17, 0, 0, ST, PACK2)]
    assert r.stats["cm_holds_sent"] == 2
    # PACK aborts: its slot goes to PACK2 at once
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.abort_frame(PGN, "resources", PACK, ST)[1], 0.6)
    assert out == [tp.cts_frame(0xFF17, 16, 1, ST, PACK2)]
    assert r.stats["abort_received_resources"] == 1


def test_sender_waits_through_a_hold_until_t4() -> None:
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST, t4_s=1.05)
    s.start(0.0)
    s.feed(tp.cts_frame(PGN, 0, 0, ST, PACK)[1], 0.2)
    assert s.state == "wait_cts" and s.deadline == pytest.approx(1.25) and s.holds == 1
    assert s.poll(1.24) == []
    assert s.poll(1.26) == [tp.abort_frame(PGN, "timeout", PACK, ST)]
    assert s.abort_reason == "timeout" and s.aborted_by == "self"


def test_sender_t3_after_rts_and_after_its_last_packet() -> None:
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST, t3_s=1.25)
    s.start(0.0)
    assert s.poll(1.2) == [] and s.poll(1.3) == [tp.abort_frame(PGN, "timeout", PACK, ST)]
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST, t3_s=1.25)
    s.start(0.0)
    s.feed(tp.cts_frame(PGN, 35, 1, ST, PACK)[1], 0.1)
    while s.next_packet(0.2):
        pass
    assert s.state == "wait_eoma" and s.poll(1.44) == []
    assert s.poll(1.46) == [tp.abort_frame(PGN, "timeout", PACK, ST)]


def test_a_lost_packet_is_asked_for_again() -> None:
    r, drops = rx()
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
    got = run(s, r, lose={5, 30})
    assert got is not None and got.payload == PAYLOAD
    assert r.stats["retransmit_request"] == 2 and s.retransmits == 2
    assert [d.reason for d in drops] == ["retransmit_request"] * 2


def test_too_many_retransmissions_abort_5() -> None:
    r, _drops = rx(max_retransmits=1)
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
    assert run(s, r, lose={5, 30}) is None
    assert r.stats["abort_sent_max_retransmit"] == 1
    assert s.state == "aborted" and s.abort_reason == "max_retransmit" and s.aborted_by == "peer"


def test_the_sender_aborts_5_when_asked_again_too_often() -> None:
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST, max_retransmits=0)
    s.start(0.0)
    s.feed(tp.cts_frame(PGN, 2, 1, ST, PACK)[1], 0.0)
    s.next_packet(0.0), s.next_packet(0.0)
    assert s.feed(tp.cts_frame(PGN, 2, 2, ST, PACK)[1], 0.0) == [
        tp.abort_frame(PGN, "max_retransmit", PACK, ST)]


def _open(r: ConnectionReceiver, t: float = 0.0) -> None:
    r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST)[1], t)


def test_duplicate_and_bad_sequence_and_unexpected_dt_abort() -> None:
    r, _ = rx()
    _open(r)
    r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.0)
    _, out = r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.0)
    assert out == [tp.abort_frame(PGN, "duplicate_sequence", ST, PACK)]
    _open(r)
    _, out = r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 17, PACK, ST)[1], 0.0)
    assert out == [tp.abort_frame(PGN, "bad_sequence", ST, PACK)]
    r2, _ = rx(max_active=1)
    r2.feed(tp.TP_CM_PGN, PACK2, tp.rts_frame(0xFF17, 121, PACK2, ST)[1], 0.0)
    _open(r2)  # held
    _, out = r2.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.0)
    assert out == [tp.abort_frame(PGN, "unexpected_dt", ST, PACK)]
    assert (r.stats["abort_sent_duplicate_sequence"], r.stats["abort_sent_bad_sequence"],
            r2.stats["abort_sent_unexpected_dt"]) == (1, 1, 1)


def test_busy_another_pgn_from_the_same_originator_and_too_many_connections() -> None:
    r, _ = rx(max_connections=1, max_active=1)
    _open(r)
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(0xFF17, 121, PACK, ST)[1], 0.0)
    assert out == [tp.abort_frame(0xFF17, "busy", ST, PACK)]
    _, out = r.feed(tp.TP_CM_PGN, PACK2, tp.rts_frame(0xFF17, 121, PACK2, ST)[1], 0.0)
    assert out == [tp.abort_frame(0xFF17, "busy", ST, PACK2)]
    assert r.stats["abort_sent_busy"] == 2 and r.open_connections == 1
    # the same PGN again: the originator started over, the new connection is taken
    r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.0)
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.rts_frame(PGN, 241, PACK, ST)[1], 0.1)
    assert out == [tp.cts_frame(PGN, 16, 1, ST, PACK)] and r.stats["cm_restarted"] == 1


def test_every_abort_reason_received_is_counted_and_ends_the_connection() -> None:
    r, _ = rx()
    for code, name in tp.ABORT_REASONS.items():
        _open(r)
        frame = bytearray(tp.abort_frame(PGN, name, PACK, ST)[1])
        _, out = r.feed(tp.TP_CM_PGN, PACK, bytes(frame), 0.0)
        assert out == [] and r.open_connections == 0
        assert r.stats[f"abort_received_{name}"] == 1, code
    frame[1] = 77  # a code J1939-21 does not name
    r.feed(tp.TP_CM_PGN, PACK, bytes(frame), 0.0)
    assert r.stats["abort_received_other"] == 2


def test_every_abort_reason_the_sender_receives_ends_it() -> None:
    for name in tp.ABORT_REASONS.values():
        s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
        s.start(0.0)
        assert s.feed(tp.abort_frame(PGN, name, ST, PACK)[1], 0.0) == []
        assert (s.state, s.abort_reason, s.aborted_by) == ("aborted", name, "peer")
        assert s.next_packet(0.0) is None and s.poll(99.0) == []


def test_sender_aborts_4_for_cts_while_sending_and_7_for_packets_it_has_not() -> None:
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
    s.start(0.0)
    s.feed(tp.cts_frame(PGN, 16, 1, ST, PACK)[1], 0.0)
    s.next_packet(0.0)
    assert s.feed(tp.cts_frame(PGN, 16, 2, ST, PACK)[1], 0.0) == [
        tp.abort_frame(PGN, "cts_while_sending", PACK, ST)]
    s = ConnectionSender(PGN, PAYLOAD, PACK, ST)
    s.start(0.0)
    assert s.feed(tp.cts_frame(PGN, 2, 35, ST, PACK)[1], 0.0) == [
        tp.abort_frame(PGN, "bad_sequence", PACK, ST)]


def test_the_station_never_originates_cts_or_eoma_to_it_are_unexpected() -> None:
    r, _ = rx()
    _, out = r.feed(tp.TP_CM_PGN, PACK, tp.cts_frame(PGN, 3, 1, PACK, ST)[1], 0.0)
    _, out2 = r.feed(tp.TP_CM_PGN, PACK, tp.eoma_frame(PGN, 241, PACK, ST)[1], 0.0)
    assert out == out2 == [] and r.stats["cm_unexpected"] == 2
    _, out = r.feed(tp.TP_DT_PGN, PACK, tp.dt_frame(PAYLOAD, 1, PACK, ST)[1], 0.0)
    assert out == [] and r.stats["cm_no_session"] == 1
    _, out = r.feed(tp.TP_CM_PGN, PACK, b"\x10\x01", 0.0)
    assert out == [] and r.stats["cm_bad_frame"] == 1


def test_sender_refuses_what_connection_mode_cannot_carry() -> None:
    with pytest.raises(ValueError):
        ConnectionSender(PGN, bytes(8), PACK, ST)
    with pytest.raises(ValueError):
        ConnectionSender(PGN, bytes(1786), PACK, ST)
    with pytest.raises(ValueError):
        ConnectionSender(PGN, PAYLOAD, PACK, 0xFF)
