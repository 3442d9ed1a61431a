#!/usr/bin/env bash
# Issue 13 screen 2 on a lent GPU (session 5): variant B (sloppy 0.6, 1400 steps) with more terse 3-digit sums
# (easy_fraction 0.4 / 0.5) or 1200 steps, 4 seeds each, in parallel. Output: $OUT/screen2.jsonl.
set -u
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
export OMP_NUM_THREADS=1 MINICHORD_HOME=/tmp/mh PYTHONUNBUFFERED=1
S="--set expert_style_fraction=0.15 --set sloppy_noise=0.6"
declare -A V=([E]="$S --set steps=1400 --set easy_fraction=0.4" [F]="$S --set steps=1400 --set easy_fraction=0.5"
              [G]="$S --set steps=1200 --set easy_fraction=0.4" [H]="$S --set steps=1400 --set easy_fraction=0.4 --set lr=2e-3")
mkdir -p /tmp/scr
for v in E F G H; do for s in 0 1 2 3; do
  timeout 200 python3 results/toy-v5/screen_base.py /tmp/scr/$v$s --seed $s ${V[$v]} --device cuda \
    > /tmp/scr/$v$s.json 2> /tmp/scr/$v$s.err &
done; done
wait
for v in E F G H; do for s in 0 1 2 3; do echo "{\"id\": \"$v$s\", \"r\": $(cat /tmp/scr/$v$s.json || echo null)}"; done; done > $OUT/screen2.jsonl
python3 -c "
import json
for l in open('$OUT/screen2.jsonl'):
    d=json.loads(l); r=d['r'] or {}
    print(d['id'], *(f'{k} {r.get(k)}' for k in ('in_domain','lt600','harder','other','median_p','seconds')))"
