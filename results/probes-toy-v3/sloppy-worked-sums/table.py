"""Print the markdown table of every probe in probes.jsonl (python results/probes-toy-v3b/table.py)."""
import json
from pathlib import Path

rows = [json.loads(l) for l in Path(__file__).with_name("probes.jsonl").read_text().splitlines() if l.strip()]
print("| id | seed | steps | overrides | median p | p<0.05 / 0.05-0.5 / >0.5 | median p: op / sum / cout / ans / fmt | digits / format median | final train loss | held-out loss terse1-2 / cf3 / stepwise / other | other skills | carry-free 3d | in-domain | rollout T=1 (stepwise share) | train s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["tag"] == "smoke":
        continue
    e, k, a, h = r["expert_p"], r["by_kind"], r["accuracy"], r["final_heldout"]
    print(f"| {r['tag']} | {r['seed']} | {r['steps']} | {', '.join(f'{x}={y}' for x, y in r['overrides'].items()) or 'defaults'} "
          f"| {e['median_p']:.3f} | {e['share_lt_0.05']:.2f} / {e['share_0.05_0.5']:.2f} / {e['share_gt_0.5']:.2f} "
          f"| {' / '.join(format(k[x]['median_p'], '.2f') for x in ('op', 'sum', 'cout', 'ans', 'fmt'))} "
          f"| {e['digits_median']:.2f} / {e['format_median']:.2f} | {r['final_train_loss']:.3f} "
          f"| {h['terse_1-2']:.2f} / {h['terse_3_carry_free']:.2f} / {h['stepwise_base_1-3']:.2f} / {h['other']:.3f} "
          f"| {a['other_skills']:.3f} | {a['carry_free_split0']:.3f} | {a['in_domain']:.3f} "
          f"| {r.get('rollout_success_T1', float('nan')):.3f} ({r.get('rollout_stepwise_share', float('nan')):.2f}) | {r['train_s']:.0f} |")
