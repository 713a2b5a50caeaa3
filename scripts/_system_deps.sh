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
