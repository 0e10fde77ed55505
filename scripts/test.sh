#!/usr/bin/env bash
# Set up and run the whole test suite on every backend (jax, torch, tensorflow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python scripts/run_suite.py "$@"
