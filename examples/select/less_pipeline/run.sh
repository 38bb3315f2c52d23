#!/usr/bin/env bash
# The LESS paper pipeline on the bundled data, from the repo root:
#   bash examples/select/less_pipeline/run.sh
# 1. random 5% warmup set -> 2. warmup training with per-epoch checkpoints (optimizer state kept)
# -> 3. offline LESS selection with Adam features at both checkpoints -> 4. training on the top 5%.
set -euo pipefail
cd "$(dirname "$0")/../../.."
d=examples/select/less_pipeline
uv run --frozen dataflex-cli select "$d/1_warmup_pick.yaml" --budget 0.05
uv run --frozen dataflex-cli train "$d/2_warmup_train.yaml"
uv run --frozen dataflex-cli select "$d/3_select.yaml"
uv run --frozen dataflex-cli train "$d/4_train.yaml"
