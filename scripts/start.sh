#!/usr/bin/env bash
# Set up (idempotent) and start the hotline on its embedded defaults: http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run
exec "${HOTLINE_VENV:-.venv}/bin/hotline" serve "$@"
