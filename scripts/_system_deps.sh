# Sourced by scripts/test: the system packages the tests run for real (not pip's).
# mosquitto: the integration tests start their own broker (sim_hw/broker.py). Missing, it
# is installed when we are root (CI containers); otherwise we say how and stop, since the
# broker tests fail without it rather than skip.
_swap_have_mosquitto() {
    { [ -n "${SWAP_MOSQUITTO:-}" ] && [ -x "$SWAP_MOSQUITTO" ]; } \
        || command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

if ! _swap_have_mosquitto; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing mosquitto (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        # a fresh container has no package lists yet
        apt-get -qq update >/dev/null
        apt-get -qq install -y --no-install-recommends mosquitto >/dev/null
    fi
    if ! _swap_have_mosquitto; then
        cat >&2 <<'MSG'
mosquitto is missing: the integration tests run a real MQTT broker.
Install it, then run the tests again:
    sudo apt-get install -y mosquitto        # Debian, Ubuntu
    sudo dnf install -y mosquitto            # Fedora
    brew install mosquitto                   # macOS
or point SWAP_MOSQUITTO at a mosquitto 2 binary.
MSG
        exit 1
    fi
fi
unset -f _swap_have_mosquitto

# The vcan tier (tests/vcan): SocketCAN tests on a real vcan0 in a qemu TCG VM, since this
# kernel may have no CAN. It needs qemu, a Debian kernel with the can, can-raw and vcan
# modules, and a static busybox (tests/vcan/vm.py --check says what is missing). Installed
# when we are root (CI containers). Still missing: with CI=true we stop here (the tier
# must run in CI); locally the tests say "vcan tier NOT RUN" and why, and are skipped.
_swap_vcan_check() { python -m tests.vcan.vm --check >/dev/null 2>&1; }
if ! _swap_vcan_check; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing qemu-system-x86, linux-image-amd64, busybox-static (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -qq update >/dev/null
        apt-get -qq install -y --no-install-recommends \
            qemu-system-x86 linux-image-amd64 busybox-static >/dev/null
    fi
    if ! _swap_vcan_check; then
        python -m tests.vcan.vm --check >&2 || true
        case "${CI:-}" in
            1|true|TRUE|True|yes)
                echo "CI=true: the vcan tier must run; install the above and run again" >&2
                exit 1 ;;
            *)
                echo "the vcan tier will NOT RUN (its tests are skipped, saying why)" >&2 ;;
        esac
    fi
fi
unset -f _swap_vcan_check
