"""The CAN ingest path's shortcuts (issue 11, CAN ingest cost) decide as before: a frame
decodes alike from bytes or a bytearray, into a dict of its own; every source address maps
to the location it always did."""

from __future__ import annotations

from drivers.bms.adapter import BmsAdapter
from drivers.bms.protocol import (
    MAX_RACK_SLOTS,
    RACK_SA_BASE,
    VEHICLE_PACK_SA,
    PackProtocol,
    slot_of_sa,
)
from station.image import BAY, Location

STATUS = {"SOC": 55.5, "PackVoltage": 380.1, "PackCurrent": -12.3, "MinCellTemp": 24,
          "MaxCellTemp": 27}


def test_a_frame_decodes_alike_from_bytes_or_bytearray_into_a_dict_of_its_own() -> None:
    proto = PackProtocol()
    can_id, data = proto.encode("PackStatus", STATUS, sa=RACK_SA_BASE)
    a = proto.decode(can_id, data)
    b = proto.decode(can_id, bytearray(data))
    assert a == b
    assert a.signals == {k: proto.message("PackStatus").decode(data)[k] for k in STATUS}
    a.signals["SOC"] = -1.0
    assert proto.decode(can_id, data).signals["SOC"] == 55.5  # nothing shared


def test_every_source_address_maps_to_the_location_it_always_did() -> None:
    adapter = BmsAdapter(PackProtocol())
    assert adapter.location_of(VEHICLE_PACK_SA) == BAY
    for sa in range(0x100):
        if sa == VEHICLE_PACK_SA:
            continue
        slot = slot_of_sa(sa)
        assert adapter.location_of(sa) == (None if slot is None else Location.rack(slot)), sa
    assert adapter.location_of(RACK_SA_BASE + MAX_RACK_SLOTS - 1) == Location.rack(MAX_RACK_SLOTS)


def test_a_bus_socket_gets_a_bigger_receive_queue_and_a_non_socket_none() -> None:
    import os
    import socket

    from drivers.bms.canbus import RECEIVE_BUFFER_BYTES, grow_receive_buffer

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = grow_receive_buffer(sock.fileno(), RECEIVE_BUFFER_BYTES)
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        if os.geteuid() == 0 or rmem_max >= RECEIVE_BUFFER_BYTES:
            assert granted >= RECEIVE_BUFFER_BYTES > before
    r, w = os.pipe()
    try:
        assert grow_receive_buffer(r, RECEIVE_BUFFER_BYTES) == 0
    finally:
        os.close(r)
        os.close(w)
