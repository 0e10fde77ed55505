#!/usr/bin/env bash
# Set up and run the main demo (real all-MiniLM-L6-v2 sentence similarity, JAX backend).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
KERAS_BACKEND="${KERAS_BACKEND:-jax}" TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python examples/demo_sentence_similarity.py
