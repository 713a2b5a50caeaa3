#!/bin/sh
# Bench set-up: virtual SocketCAN buses on a machine whose kernel has CAN (as root).
#
#   deploy/vcan0.sh                 # vcan0: one bus for every pack (the default configs)
#   deploy/vcan0.sh vcan0 vcan1     # two buses, e.g. the bay on vcan0, the rack on vcan1
#
# The same set-up the test suite's VM makes (tests/vcan/vm.py, its /init): the modules
# can, can-raw, vcan (can-gw too, to route between buses), then each interface added and
# brought up. Safe to run again: an interface that exists is only brought up.
# Then in both swapd.toml and swap-sim.toml:
#   [can]      interface = "socketcan"  channel = "vcan0"     (swapd; bitrate is ignored)
#   [sim.can]  interface = "socketcan"  channel = "vcan0"     (swap-sim)
# or the [[can.buses]] / [[sim.can.buses]] form for two buses (README, bench section).
#
# systemd-networkd instead of this script (at every boot):
#   /etc/modules-load.d/vcan.conf          can
#                                          can_raw
#                                          vcan
#   /etc/systemd/network/80-vcan0.netdev   [NetDev]
#                                          Name=vcan0
#                                          Kind=vcan
#   /etc/systemd/network/80-vcan0.network  [Match]
#                                          Name=vcan0
#                                          [Link]
#                                          RequiredForOnline=no
# (one .netdev/.network pair per bus), then `systemctl restart systemd-networkd`.
# A station's real bus is deploy/can0.network.
set -eu

[ "$#" -gt 0 ] || set -- vcan0

for module in can can-raw vcan; do
    modprobe "$module" || {
        echo "modprobe $module failed: this kernel has no SocketCAN ($(uname -r))." >&2
        echo "Debian: apt-get install linux-image-amd64; or run the tests' VM:" >&2
        echo "  .venv/bin/python -m tests.vcan.vm -- pytest -m vcan tests/vcan" >&2
        exit 1
    }
done
modprobe can-gw 2>/dev/null || true  # optional: cangw routes frames between buses

for bus in "$@"; do
    if ! ip link show dev "$bus" >/dev/null 2>&1; then
        ip link add dev "$bus" type vcan
    fi
    ip link set up "$bus"
    echo "$bus up"
done
