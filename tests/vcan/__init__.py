"""The vcan tier: SocketCAN tests on a real vcan0 inside a qemu VM (see vm.py)."""
