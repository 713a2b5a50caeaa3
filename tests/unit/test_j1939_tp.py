"""J1939-21 BAM: the sender's frames and the receiver's rules, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.bms import j1939_tp as tp
from drivers.bms.j1939_tp import BamReceiver, Drop, bam_frames

SA = 0xF4
VI_PGN = 0xFEEC
PAYLOAD = b"LSJA24U61NG123456*"
GAP = 0.05


def split(can_id: int) -> tuple[int, int, int]:
    """(TP PGN, source, destination) of a TP frame id."""
    return (can_id >> 8) & 0xFF00, can_id & 0xFF, (can_id >> 8) & 0xFF


def feed_all(rx: BamReceiver, frames: list[tuple[int, bytes]], t0: float = 0.0,
             gap: float = GAP) -> list[tp.Transfer | None]:
    out = []
    for i, (can_id, data) in enumerate(frames):
        pgn, sa, da = split(can_id)
        out.append(rx.feed(pgn, sa, da, data, t0 + i * gap))
    return out


def cm(size: int, packets: int, pgn: int = VI_PGN, control: int = tp.CM_BAM) -> bytes:
    return bytes([control, size & 0xFF, size >> 8, packets, 0xFF,
                  pgn & 0xFF, (pgn >> 8) & 0xFF, pgn >> 16])


def dt(seq: int, chunk: bytes = b"ABCDEFG") -> bytes:
    return bytes([seq]) + chunk


def drops(rx: BamReceiver) -> dict[str, int]:
    return {k: v for k, v in rx.stats.items() if v and k != "completed"}


# ---- the sender ---------------------------------------------------------------------

def test_sender_frames() -> None:
    frames = bam_frames(VI_PGN, PAYLOAD, SA)
    assert len(frames) == 4
    assert frames[0] == (0x1CECFFF4, bytes([32, 18, 0, 3, 0xFF, 0xEC, 0xFE, 0]))
    assert [i for i, _ in frames[1:]] == [0x1CEBFFF4] * 3
    assert [d[0] for _, d in frames[1:]] == [1, 2, 3]
    assert frames[3][1] == b"\x03456*\xff\xff\xff"  # unused bytes of the last packet: 0xFF
    assert all(len(d) == 8 for _, d in frames)


@pytest.mark.parametrize("size", [0, 8, tp.MAX_SIZE + 1])
def test_sender_refuses_what_needs_no_transport_or_does_not_fit(size: int) -> None:
    with pytest.raises(ValueError, match=r"J1939-21 carries 9\.\.1785"):
        bam_frames(VI_PGN, bytes(size), SA)


@given(st.binary(min_size=tp.MIN_SIZE, max_size=tp.MAX_SIZE),
       st.integers(0, 0x3FFFF), st.integers(0, 0xFD))
def test_round_trip(payload: bytes, pgn: int, sa: int) -> None:
    rx = BamReceiver()
    frames = bam_frames(pgn, payload, sa)
    assert len(frames) == 1 + -(-len(payload) // 7)
    results = feed_all(rx, frames, gap=0.2)
    assert results[:-1] == [None] * (len(frames) - 1)
    done = results[-1]
    assert done is not None
    assert (done.source, done.pgn, done.payload) == (sa, pgn, payload)
    assert done.started == 0.0 and done.finished == pytest.approx(0.2 * (len(frames) - 1))
    assert rx.stats["completed"] == 1 and not drops(rx) and rx.open_transfers == 0


def test_largest_message_is_1785_bytes() -> None:
    rx = BamReceiver()
    payload = bytes(range(256)) * 6 + bytes(249)
    assert len(payload) == tp.MAX_SIZE
    done = feed_all(rx, bam_frames(0xFEEC, payload, SA))[-1]
    assert done is not None and done.payload == payload


def test_sources_are_reassembled_apart() -> None:
    rx = BamReceiver()
    a = bam_frames(VI_PGN, PAYLOAD, 0xF4)
    b = bam_frames(VI_PGN, b"WVWZZZ1JZXW000001*", 0x80)
    done = []
    for fa, fb in zip(a, b, strict=True):  # interleaved, packet by packet
        for can_id, data in (fa, fb):
            pgn, sa, da = split(can_id)
            r = rx.feed(pgn, sa, da, data, 0.0)
            if r is not None:
                done.append((r.source, r.payload))
    assert done == [(0xF4, PAYLOAD), (0x80, b"WVWZZZ1JZXW000001*")]


# ---- the receiver's rules -----------------------------------------------------------

def test_wrong_sequence_drops_the_transfer() -> None:
    rx = BamReceiver()
    assert rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(18, 3), 0.0) is None
    assert rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.05) is None
    assert rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(3), 0.10) is None  # 2 skipped
    assert drops(rx) == {"bad_sequence": 1}
    assert rx.open_transfers == 0
    # what follows belongs to no transfer any more
    assert rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(2), 0.15) is None
    assert drops(rx) == {"bad_sequence": 1, "no_session": 1}


def test_a_repeated_packet_is_a_wrong_sequence() -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(18, 3), 0.0)
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.05)
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.10)
    assert drops(rx) == {"bad_sequence": 1}


def test_a_packet_beyond_the_count_is_too_many() -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(18, 3), 0.0)
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.05)
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(4), 0.10)
    assert drops(rx) == {"too_many_packets": 1}
    assert rx.stats["completed"] == 0


def test_a_packet_after_the_last_belongs_to_no_transfer() -> None:
    rx = BamReceiver()
    frames = bam_frames(VI_PGN, PAYLOAD, SA)
    assert feed_all(rx, frames)[-1] is not None
    assert rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(4), 0.3) is None
    assert drops(rx) == {"no_session": 1}


def test_a_packet_without_a_tp_cm() -> None:
    rx = BamReceiver()
    assert rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.0) is None
    assert drops(rx) == {"no_session": 1}


def test_a_new_tp_cm_mid_transfer_restarts() -> None:
    seen: list[Drop] = []
    rx = BamReceiver(on_drop=seen.append)
    frames = bam_frames(VI_PGN, PAYLOAD, SA)
    feed_all(rx, frames[:2])  # TP.CM and packet 1
    results = feed_all(rx, frames, t0=0.1)  # the sender starts over
    assert results[-1] is not None and results[-1].payload == PAYLOAD
    assert drops(rx) == {"restarted": 1}
    assert seen == [Drop(SA, "restarted", VI_PGN, "new TP.CM after packet 1 of 3")]


@pytest.mark.parametrize(("size", "packets"), [(18, 2), (18, 4), (8, 2), (0, 0)])
def test_size_and_packet_count_must_agree(size: int, packets: int) -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(size, packets), 0.0)
    assert drops(rx) == {"bad_size": 1} and rx.open_transfers == 0
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, dt(1), 0.05)
    assert drops(rx) == {"bad_size": 1, "no_session": 1}


def test_a_size_the_message_does_not_have() -> None:
    rx = BamReceiver(sizes={VI_PGN: 18})
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(21, 3), 0.0)
    assert drops(rx) == {"bad_size": 1} and rx.open_transfers == 0


@pytest.mark.parametrize("size", [tp.MAX_SIZE + 1, 0xFFFF])
def test_larger_than_j1939_allows(size: int) -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(size, 255), 0.0)
    assert drops(rx) == {"too_large": 1} and rx.open_transfers == 0


def test_a_smaller_bound() -> None:
    rx = BamReceiver(max_size=100)
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(101, 15), 0.0)
    assert drops(rx) == {"too_large": 1}
    with pytest.raises(ValueError):
        BamReceiver(max_size=tp.MAX_SIZE + 1)
    with pytest.raises(ValueError):
        BamReceiver(sizes={VI_PGN: 2000})


def test_a_pgn_not_taken_is_consumed_unstored() -> None:
    rx = BamReceiver(sizes={VI_PGN: 18})
    frames = bam_frames(0xFECA, PAYLOAD, SA)  # DM1, say
    assert feed_all(rx, frames) == [None] * 4
    assert drops(rx) == {"unknown_pgn": 1}  # once, not once per packet
    assert rx.stats["completed"] == 0


@pytest.mark.parametrize("control", [16, 17, 19, 255])
def test_connection_mode_is_not_taken(control: int) -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0x56, cm(18, 3, control=control), 0.0)
    assert drops(rx) == {"not_bam": 1} and rx.open_transfers == 0


def test_a_bam_must_go_to_the_global_address() -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0x56, cm(18, 3), 0.0)
    assert drops(rx) == {"not_bam": 1}


@pytest.mark.parametrize("length", [0, 7, 9])
def test_tp_frames_are_eight_bytes(length: int) -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, bytes(length), 0.0)
    rx.feed(tp.TP_DT_PGN, SA, 0xFF, bytes(length), 0.0)
    assert drops(rx) == {"bad_frame": 2}


# ---- T1 ---------------------------------------------------------------------------

def test_t1_between_packets() -> None:
    rx = BamReceiver()
    frames = bam_frames(VI_PGN, PAYLOAD, SA)
    feed_all(rx, frames[:2])  # TP.CM at 0.0, packet 1 at 0.05
    rx.expire(0.05 + tp.T1_S)  # exactly T1: still waiting
    assert rx.open_transfers == 1 and not drops(rx)
    pgn, sa, da = split(frames[2][0])
    assert rx.feed(pgn, sa, da, frames[2][1], 0.05 + tp.T1_S + 0.001) is None
    assert drops(rx) == {"timeout": 1, "no_session": 1}


def test_t1_after_the_tp_cm() -> None:
    seen: list[Drop] = []
    rx = BamReceiver(on_drop=seen.append)
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(18, 3), 10.0)
    rx.expire(10.8)
    assert drops(rx) == {"timeout": 1} and rx.open_transfers == 0
    assert seen[0].reason == "timeout" and seen[0].pgn == VI_PGN
    assert "packet 1 of 3" in seen[0].detail


def test_slow_but_within_t1_completes() -> None:
    rx = BamReceiver()
    done = feed_all(rx, bam_frames(VI_PGN, PAYLOAD, SA), gap=0.7)[-1]
    assert done is not None and not drops(rx)


def test_another_sources_frame_expires_a_stale_transfer() -> None:
    rx = BamReceiver()
    rx.feed(tp.TP_CM_PGN, SA, 0xFF, cm(18, 3), 0.0)
    rx.feed(tp.TP_CM_PGN, 0x80, 0xFF, cm(18, 3), 1.0)
    assert drops(rx) == {"timeout": 1} and rx.open_transfers == 1


def test_a_configured_t1() -> None:
    rx = BamReceiver(t1_s=0.1)
    feed_all(rx, bam_frames(VI_PGN, PAYLOAD, SA), gap=0.15)
    assert rx.stats["timeout"] == 1 and rx.stats["completed"] == 0
