#!/usr/bin/env bash
# Set up the project (idempotent) and run it.
#
#   ./run.sh              create .venv if needed, install the requirements, launch the Gradio app (python app.py)
#   ./run.sh [ARGS]       the same, passing ARGS to app.py (e.g. ./run.sh --model models/ddpm-faces64-baseline)
#   ./run.sh test [ARGS]  the same setup plus Debian's chromium (browser tests), then the lint (ruff check, ruff format
#                         --check) and python -m pytest -q tests [ARGS]
#
# Installation is skipped when a stamp in .venv matches the hash of the requirement files, so a second run starts
# at once. torch is installed first and on its own (pinned; the CPU wheel is picked up from pip's find-links). The
# repository itself is installed in editable mode (pip install -e ., no dependencies), so its top-level modules import
# from anywhere, e.g. `python scripts/fid_screen.py` as well as `python -m scripts.fid_screen`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TORCH_REQUIREMENT="torch==2.13.0"
VENV=".venv"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[run.sh] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else log "need root for: $*"; return 1
  fi
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -o DPkg::Lock::Timeout=600
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "$@"
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
      log "python venv module missing; installing python3-venv"
      rm -rf "$VENV"
      apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  local stamp_hash stamp
  stamp_hash="$( { echo "$TORCH_REQUIREMENT"; "$VENV/bin/python" --version 2>&1; cat requirements.txt requirements-dev.txt pyproject.toml; } \
    | sha256sum | cut -c1-16)"
  stamp="$VENV/.installed-$stamp_hash"
  if [ -f "$stamp" ]; then
    return
  fi
  log "installing $TORCH_REQUIREMENT"
  "$VENV/bin/python" -m pip install "$TORCH_REQUIREMENT"
  log "installing requirements-dev.txt"
  "$VENV/bin/python" -m pip install -r requirements-dev.txt
  log "installing the repository (editable)"
  "$VENV/bin/python" -m pip install --no-deps -e .
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

setup_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian chromium for the browser tests"
    apt_install chromium
  fi
}

setup_venv
if [ "${1:-}" = "test" ]; then
  shift
  setup_chromium
  log "ruff check ."
  "$VENV/bin/ruff" check .
  log "ruff format --check ."
  "$VENV/bin/ruff" format --check .
  exec "$VENV/bin/python" -m pytest -q tests "$@"
fi
exec "$VENV/bin/python" app.py "$@"
