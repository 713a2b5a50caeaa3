"""python-can's receive cost per frame, by interface (issue 11), printed, never asserted.

What swapd's bus reader does per frame (drivers/bms/canbus.py: the loop wakes on the
socket, then `bus.recv(0)` up to DRAIN_LIMIT frames): one socket sends a batch of frames,
a second socket's `recv(0)` takes them all from its queue, timed. The frames are queued
before the timing starts, so the figure is the receive itself (select, the read, the
decoding into a can.Message), with no waiting and no sending in it.

SocketCAN needs a CAN-enabled kernel; the project's hosts have none, so it is measured in
the vcan VM (tests/vcan/vm.py), with udp_multicast in the same VM (same Python, same
emulated CPU): the ratio socketcan/udp_multicast there, times udp_multicast's figure on
the host, estimates what socketcan costs on the host.

    python -m tests.vcan.vm -- python bench/can_recv_cost.py             # in the VM
    .venv/bin/python bench/can_recv_cost.py --interfaces udp_multicast   # on the host
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import can

BATCH = 100  # queued at once: well within a socket's default receive queue
UDP_GROUP = "239.74.163.2"  # python-can's default IPv4 group


def open_pair(interface: str, channel: str) -> tuple[can.BusABC, can.BusABC]:
    if interface == "socketcan":
        return (can.Bus(interface="socketcan", channel=channel),
                can.Bus(interface="socketcan", channel=channel))
    return (can.Bus(interface="udp_multicast", channel=UDP_GROUP, receive_own_messages=False),
            can.Bus(interface="udp_multicast", channel=UDP_GROUP, receive_own_messages=False))


def measure(interface: str, channel: str, frames: int, rounds: int) -> list[float]:
    """us per frame received, one figure per round (`frames` frames each)."""
    tx, rx = open_pair(interface, channel)
    msg = can.Message(arbitration_id=0x18FF5001, is_extended_id=True,
                      data=bytes(range(8)))
    out = []
    try:
        while rx.recv(0.05) is not None:  # anything left from before
            pass
        for _ in range(rounds):
            spent, got, lost = 0.0, 0, 0
            for _ in range(frames // BATCH):
                for i in range(BATCH):
                    msg.data[0] = i
                    tx.send(msg)
                time.sleep(0.005)  # let the kernel deliver the batch
                t0 = time.perf_counter()
                n = 0
                while n < BATCH and rx.recv(0) is not None:
                    n += 1
                spent += time.perf_counter() - t0
                got += n
                if n < BATCH:  # late or lost: take the late ones untimed
                    while n < BATCH and rx.recv(0.1) is not None:
                        n += 1
                    lost += BATCH - n
            out.append(spent / max(got, 1) * 1e6)
            if lost:
                print(f"  {interface}: {lost} of {frames} frames not received in a round")
    finally:
        tx.shutdown()
        rx.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interfaces", default="socketcan,udp_multicast")
    ap.add_argument("--channel", default="vcan0", help="socketcan's interface")
    ap.add_argument("--frames", type=int, default=20000, help="frames per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--multicast-route", action="store_true",
                    help="add a route for 224.0.0.0/4 on lo first (the VM has no other "
                         "interface; needs root)")
    args = ap.parse_args()
    if args.multicast_route:
        subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=False)
    figures = {}
    for interface in args.interfaces.split(","):
        runs = measure(interface, args.channel, args.frames, args.rounds)
        figures[interface] = statistics.median(runs)
        print(f"{interface:14s} recv: {statistics.median(runs):6.2f} us/frame median, "
              f"min {min(runs):.2f}, max {max(runs):.2f} ({args.rounds} x {args.frames})",
              flush=True)
    if "socketcan" in figures and "udp_multicast" in figures:
        print(f"socketcan / udp_multicast: {figures['socketcan'] / figures['udp_multicast']:.2f}")


if __name__ == "__main__":
    main()
