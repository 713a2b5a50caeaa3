#!/bin/sh
# Bench set-up: a virtual SocketCAN interface (needs the vcan kernel module; not available in
# containers without it). Then set [can] interface = "socketcan", channel = "vcan0" in both
# swapd.toml and swap-sim.toml.
set -e
modprobe vcan
ip link add dev vcan0 type vcan 2>/dev/null || true
ip link set up vcan0
