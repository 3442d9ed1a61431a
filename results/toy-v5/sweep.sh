#!/usr/bin/env bash
# The mu sweeps of issue 13 on the default base (toy v5): CHORD-phi's mu over 0.05 / 0.3 / 0.5 (0.1 is the
# default, in the reproduce run) and CHORD-mu's peak over 0.3 / 0.5 (0.9 is the default). 3 seeds, 100 steps.
#   bash results/toy-v5/sweep.sh OUT       (then: python results/toy-v4/base-v6/sweep/sweep_table.py OUT)
set -eu
OUT=${1:?usage: sweep.sh OUT}
M=${MINICHORD:-minichord}
for mu in 0.05 0.3 0.5; do
  $M reproduce --methods chord-phi --set mu_peak=$mu --set mu_valley=$mu --sft-curve-steps 0 --out "$OUT/chord-phi-mu$mu" > "$OUT/chord-phi-mu$mu.log" 2>&1
done
for peak in 0.3 0.5; do
  $M reproduce --methods chord-mu --set mu_peak=$peak --sft-curve-steps 0 --out "$OUT/chord-mu-peak$peak" > "$OUT/chord-mu-peak$peak.log" 2>&1
done
