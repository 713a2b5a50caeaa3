# Sourced by the scripts: create .venv with the locked dependencies and the project (editable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SWAP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.installed-$(sha1sum "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setting up $VENV (locked dependencies from requirements.lock)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.lock" >&2
    "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT" >&2
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
