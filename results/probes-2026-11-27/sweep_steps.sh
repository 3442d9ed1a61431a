#!/bin/bash
# Q1: current recipe, base in-domain accuracy vs pre-training steps and seed.
set -e
source .venv/bin/activate
for seed in 0 1; do for steps in 300 400 500 600 800; do
  [ "$seed" = 0 ] && [ "$steps" = 300 ] && continue  # already run
  python results/probes-2026-11-27/pretrain_probe.py /tmp/hI/base_s${seed}_${steps} --seed $seed --steps $steps 2>&1 | grep "accuracy\|median_p"
done; done
