#!/usr/bin/env bash
# Create (once) and update the project's virtual environment at .venv, then install cress_bitnet into it.
# Usage: bash scripts/setup_venv.sh        Env: PYTHON_BIN (default python3.11, else python3)
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,3p' "$0"; exit 0
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON_BIN="${PYTHON_BIN:-$(command -v python3.11 || command -v python3)}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup_venv] creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# A regular (non-editable) install: fairseq then also finds `--user-dir cress_bitnet` outside this checkout.
.venv/bin/python -m pip install -q ".[dev]"
echo "[setup_venv] ready: $REPO/.venv"
