#!/usr/bin/env bash
# The whole DoReMi pipeline (reference -> proxy -> target) on the bundled data, from the repo root:
#   bash examples/doremi/run.sh [key=value overrides applied to all three steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
for step in 1_reference 2_proxy 3_target; do
  uv run --frozen dataflex-cli train "examples/doremi/$step.yaml" "$@"
done
