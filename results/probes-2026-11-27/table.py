"""Print the markdown tables of results/probes-2026-11-27/pretrain_probes.jsonl and results/probes-2026-11-27/train_probes.jsonl."""
import json
from pathlib import Path
here = Path(__file__).parent
print("| seed | steps | overrides | in_domain | harder | other | sort | median expert p | p<1e-3 | train s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for l in open(here / "pretrain_probes.jsonl"):
    r = json.loads(l); a = r["accuracy"]; e = r["expert_tokens"]
    print(f"| {r['seed']} | {r['steps']} | {r['overrides'] or '-'} | {a['in_domain']:.3f} | {a['harder']:.3f} | "
          f"{a['other_skills']:.3f} | {a['other_skills_per_skill']['sort']:.3f} | {e['median_p']:.3f} | "
          f"{e['share_p_below_1e-3']:.2f} | {r['train_s']} |")
print()
print("| method | base | overrides | step0 in/harder/other | best in | best harder | min other | last in/harder/other | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
if (here / "train_probes.jsonl").exists():
    for l in open(here / "train_probes.jsonl"):
        r = json.loads(l); f, z = r["first"], r["last"]
        ov = " ".join(o for o in r["overrides"] if not o.startswith("init="))
        print(f"| {r['method']} | {Path(r['base']).name} | {ov} | {f['in_domain']}/{f['harder']}/{f['other_skills']} | "
              f"{r['best_in_domain']} | {r['best_harder']} | {r['min_other']} | "
              f"{z['in_domain']}/{z['harder']}/{z['other_skills']} (step {z['step']}) | {r['wall_s']} |")
