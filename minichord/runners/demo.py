"""`minichord demo` (`make demo`): CHORD-phi on the embedded toy task, on a CPU, from the cached
(or freshly pre-trained) base model; prints accuracy before/after and a few outputs, base vs trained."""

import time
from pathlib import Path

from minichord.runners.plot import read_jsonl
from minichord.trainer import prepare_run


def run_demo(out_dir: Path, *, steps: int | None = None, seed: int = 0, hardware: tuple[str, ...] = (),
             overrides: tuple[str, ...] = ()) -> None:
    """hardware: extra overrides such as ("device=cuda", "dtype=bf16"); overrides: any TrainConfig KEY=VALUE (a real
    model: init=DIR prompts_file=... experts_file=... eval_file=in_domain.jsonl,harder.jsonl,other_skills.jsonl)."""
    t0 = time.perf_counter()
    real = any(o.startswith("init=") for o in overrides)
    print("minichord demo: CHORD-phi on " + ("your model and data" if real else
                                             "the toy task (addition; reverse/sort/copy measure retention)"))
    print("step 1/3: " + ("load the model" if real else "base model (pre-trained once, then cached)"))
    overrides = ["n_test=100", "eval_every=1000", "save_every=1000", f"steps={steps or 100}", f"seed={seed}",
                 *overrides, *hardware]
    trainer = prepare_run("chord-phi", out_dir, overrides=overrides, resume=False)
    print(f"step 2/3: CHORD-phi for {trainer.steps} steps ({trainer.cfg.prompts_per_step} prompts x "
          f"{trainer.cfg.group_size} rollouts + {trainer.cfg.experts_per_step} expert demos per step, "
          f"mu = {trainer.cfg.mu_peak})")
    after, before = trainer.run(), read_jsonl(Path(out_dir) / "eval.jsonl")[0]  # the base's evaluation (step 0)
    print("step 3/3: results (greedy decoding on held-out splits)\n")
    print(f"{'split':14s} {'before':>8s} {'after':>8s}   {'mean length before -> after'}")
    for split in (s for s in before if isinstance(before[s], dict)):
        b, a = before[split], after[split]
        print(f"{split:14s} {b['accuracy']:8.3f} {a['accuracy']:8.3f}   "
              f"{b['response_length']:.1f} -> {a['response_length']:.1f} tokens")
    rows = read_jsonl(Path(out_dir) / "samples.jsonl")  # the base's answers (step 0) first, the trained ones last
    first = rows[0]["samples"][0]["split"]
    print(f"\nsample outputs ({first}):")
    for sb, sa in [(b, a) for b, a in zip(rows[0]["samples"], rows[-1]["samples"]) if b["split"] == first][:3]:
        print(f"  prompt  : {sb['prompt']}   (answer {sb['answer']})\n  base    : {sb['response']!r}\n"
              f"  trained : {sa['response']!r}")
    print(f"\nrun directory: {out_dir} (metrics.jsonl, eval.jsonl, samples.jsonl, checkpoint/); answers across steps: "
          f"minichord samples {out_dir}; plot with: minichord plot {out_dir} -o {Path(out_dir) / 'curves.png'}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
