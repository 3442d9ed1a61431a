#!/usr/bin/env bash
# Issue 13 screen on a lent GPU (session 5): 4 pre-training variants x 3 seeds in parallel, then GRPO 100 steps on
# each base (training seed 0). Output: $OUT/screen.jsonl (one line per base), $OUT/grpo.txt (each run's evals).
set -u
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
export OMP_NUM_THREADS=1 MINICHORD_HOME=/tmp/mh PYTHONUNBUFFERED=1
S="--set expert_style_fraction=0.15 --set sloppy_noise=0.6"
declare -A V=([A]="$S" [B]="$S --set steps=1400" [C]="$S --set sloppy_answer_noise=true" [D]="$S --set sloppy_answer_noise=true --set steps=1400")
mkdir -p /tmp/scr
for v in A B C D; do for s in 0 1 2; do
  timeout 230 python3 results/toy-v5/screen_base.py /tmp/scr/$v$s --seed $s ${V[$v]} --device cuda \
    > /tmp/scr/$v$s.json 2> /tmp/scr/$v$s.err &
done; done
wait
for v in A B C D; do for s in 0 1 2; do echo "{\"id\": \"$v$s\", \"r\": $(cat /tmp/scr/$v$s.json || echo null)}"; tail -2 /tmp/scr/$v$s.err >&2; done; done > $OUT/screen.jsonl
cat $OUT/screen.jsonl | cut -c1-330
for v in A B C D; do for s in 0 1 2; do
  [ -s /tmp/scr/$v$s.json ] && timeout 200 python3 -m minichord.cli train --method grpo --model /tmp/scr/$v$s --set seed=0 \
    --set steps=100 --set eval_every=25 --set n_test=150 --out /tmp/scr/g$v$s --device cuda > /tmp/scr/g$v$s.log 2>&1 &
done; done
wait
for v in A B C D; do for s in 0 1 2; do echo "== $v$s"; grep -E "eval in_domain" /tmp/scr/g$v$s.log | tr '\n' ' '; tail -1 /tmp/scr/g$v$s.log; done; done | tee $OUT/grpo.txt
