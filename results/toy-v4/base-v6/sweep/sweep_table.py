"""One README row per sweep dir: in-domain, harder, other skills (mean ± sample std over seeds), response length,
expert NLL mean of the first 5 steps (over seeds) -> range over seeds of the last 5 steps' mean."""
import json, sys, statistics as st, glob, os
def ms(xs): return f"{st.mean(xs):.3f} ± {st.stdev(xs):.3f}"
for d in sorted(glob.glob(f"{sys.argv[1]}/*/")):
    name = os.path.basename(d.rstrip("/"))
    method = "chord-phi" if "phi" in name else "chord-mu"
    runs = json.load(open(f"{d}/results.json"))["results"][method]
    firsts, lasts = [], []
    for seed in (0, 1, 2):
        nll = [x["expert_nll"] for x in map(json.loads, open(f"{d}/{method}/seed{seed}/metrics.jsonl")) if x.get("expert_nll") is not None]
        firsts.append(st.mean(nll[:5])); lasts.append(st.mean(nll[-5:]))
    print(f"| {method} | {name} | {ms([r['in_domain'] for r in runs])} | {ms([r['harder'] for r in runs])} | {ms([r['other_skills'] for r in runs])} | {st.mean(r['response_length'] for r in runs):.1f} | {st.mean(firsts):.2f} → {min(lasts):.2f}–{max(lasts):.2f} |")
