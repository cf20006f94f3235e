#!/usr/bin/env bash
# What the reference recipe's training costs on this GPU: the bare ViT-Det ViT-B student at
# 1024 px and one full training step of recipes/sam_clip.yaml, bf16, random weights (nothing is
# downloaded or read). Prints MFU against the GPU's dense bf16 peak, the step's time split and
# peak memory; docs/performance.md explains each number.
#
#   scripts/gpu_check.sh                       # on a CUDA machine, from the repository root
#   scripts/gpu_check.sh --json gpu_check.json # also write the numbers
#   scripts/gpu_check.sh --peak-tflops 400     # a GPU the check does not know
#   scripts/gpu_check.sh --smoke --steps 1     # the same code on CPU, fp32, shrunk as a dry run
#                                              # (minutes: the ViT-L/14 teacher runs on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m mergekit_vision.cli bench --gpu-check recipes/sam_clip.yaml "$@"
