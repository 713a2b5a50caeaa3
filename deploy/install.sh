#!/usr/bin/env bash
# Install swapd on a station computer (as root); running it again upgrades in place.
#
#   deploy/install.sh [--wheel FILE] [--start]
#
#   --wheel FILE     install this wheel (default: build one from this checkout)
#   --start          also start (or restart) the service now; default: enable only
#   --root DIR       install under DIR instead of / (also $SWAPD_INSTALL_ROOT): a staging
#                    tree or a test; implies nothing else, combine with the two below
#   --no-user        do not create the swapd user and group
#   --no-systemctl   do not run systemctl (daemon-reload, enable, start)
#
# What lives where (docs/operations.md "Install"):
#   /opt/swapd/.venv               swapd, swapctl... in a venv of their own
#   /etc/swapd/swapd.toml          the configuration (root:swapd 0640; never overwritten)
#   /etc/systemd/system/swapd.service, /etc/systemd/network/80-can*.network
#   /var/lib/swapd, /run/swapd     made by systemd (StateDirectory=, RuntimeDirectory=)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${SWAPD_INSTALL_ROOT:-}
WHEEL=""
START=0
MAKE_USER=1
SYSTEMCTL=1
PYTHON=${PYTHON:-python3}

die() { echo "install.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheel) WHEEL=$(realpath "${2:?--wheel needs a file}"); shift 2 ;;
        --start) START=1; shift ;;
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --no-user) MAKE_USER=0; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
ROOT=${ROOT%/}

# Writing /opt, /etc and making users needs root; a staging tree does not.
if [[ -z "$ROOT" || $MAKE_USER -eq 1 || $SYSTEMCTL -eq 1 ]] && [[ $(id -u) -ne 0 ]]; then
    die "run as root (or stage with --root DIR --no-user --no-systemctl)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11"

OPT="$ROOT/opt/swapd"
ETC="$ROOT/etc/swapd"

# 1. The system user and group the unit runs as (User=swapd, Group=swapd).
if [[ $MAKE_USER -eq 1 ]]; then
    getent group swapd >/dev/null || groupadd --system swapd
    id -u swapd >/dev/null 2>&1 || useradd --system --no-create-home --gid swapd \
        --home-dir /var/lib/swapd --shell /usr/sbin/nologin swapd
fi

# 2. The wheel: given, or built from this checkout (its data files ride along).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [[ -z "$WHEEL" ]]; then
    "$PYTHON" -m pip wheel --no-deps -q -w "$TMP" "$SRC"
    WHEEL=$(ls "$TMP"/swapstation-*.whl)
fi
[[ -f "$WHEEL" ]] || die "no wheel at $WHEEL"

# 3. A venv of its own; the dependencies at the locked versions. A constraints file pins
# versions without installing what it lists (the test-only packages stay out).
install -d -m 0755 "$OPT"
[[ -x "$OPT/.venv/bin/python" ]] || "$PYTHON" -m venv "$OPT/.venv"
"$OPT/.venv/bin/pip" install -q --disable-pip-version-check \
    -c "$SRC/requirements.lock" "$WHEEL"
# The same version number again (a rebuilt checkout): replace the code itself too.
"$OPT/.venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$WHEEL"
install -d -m 0755 "$OPT/docs"
install -m 0644 "$SRC"/docs/*.md "$OPT/docs/"
install -m 0644 "$SRC/README.md" "$OPT/README.md"

# 4. The configuration: the example only if there is none yet (never overwrite a site's).
GROUP_OPT=()
getent group swapd >/dev/null && GROUP_OPT=(-g swapd)
install -d -m 0750 "${GROUP_OPT[@]}" "$ETC"
if [[ ! -e "$ETC/swapd.toml" ]]; then
    install -m 0640 "${GROUP_OPT[@]}" "$SRC/deploy/swapd.toml" "$ETC/swapd.toml"
    echo "install.sh: $ETC/swapd.toml is the simulator example: set the PLC, CAN and" \
         "cloud sections, journal.path = \"/var/lib/swapd/journal.sqlite\" and" \
         "api.socket = \"/run/swapd/swapd.sock\" (the unit lets swapd write only there)"
fi

# 5. The unit, and the CAN interfaces' .network files: systemd-networkd applies them
# (bit rate, restart after bus-off) when it brings the interface up.
install -d -m 0755 "$ROOT/etc/systemd/system" "$ROOT/etc/systemd/network"
install -m 0644 "$SRC/deploy/swapd.service" "$ROOT/etc/systemd/system/swapd.service"
shopt -s nullglob
for f in "$SRC"/deploy/can*.network; do
    install -m 0644 "$f" "$ROOT/etc/systemd/network/80-$(basename "$f")"
done
shopt -u nullglob

# 6. Enable (and with --start, (re)start) the service.
if [[ $SYSTEMCTL -eq 1 ]]; then
    systemctl daemon-reload
    systemctl enable swapd
    if [[ $START -eq 1 ]]; then
        systemctl restart swapd
        systemctl --no-pager status swapd || true
    fi
fi
echo "install.sh: swapd $("$OPT/.venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("swapstation"))') installed in $OPT"
