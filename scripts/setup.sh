#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine, run as root with Python 3.11+:
# system packages, a virtualenv in .venv (override with HOTLINE_VENV), torch (CPU), the project.
#   scripts/setup.sh        what the hotline needs to run
#   scripts/setup.sh test   plus what the test suite needs (PostgreSQL server, Chromium, Kannel, test extras)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
venv=${HOTLINE_VENV:-.venv}
python=${PYTHON:-python3}

"$python" - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# espeak-ng: the offline Mandarin TTS fallback (and the tests' synthesized callers).
apt_packages=(ca-certificates espeak-ng)
if [ "$mode" = test ]; then
  # kannel-extras: fakesmsc for the Kannel tests; fonts-wqy-microhei: legible Chinese in the consoles' screenshots
  apt_packages+=(postgresql chromium fonts-wqy-microhei kannel kannel-extras)
  # The SIP tests' real peers: a softphone (baresip), SIPp (sip-tester), the Kamailio dispatcher; sox for test audio.
  apt_packages+=(baresip-core sip-tester kamailio sox)
fi
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# torch first, pinned: a plain dependency on torch would pull a multi-GB CUDA build.
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$venv/bin/pip" install -q torch==2.13.0
fi
extras=""
[ "$mode" = test ] && extras="[test]"
"$venv/bin/pip" install -q -e ".${extras}"
"$venv/bin/python" -c "import telephony.cli, kb, rag, voice" || { echo "setup: install failed" >&2; exit 1; }
echo "setup: ready ($venv)"
