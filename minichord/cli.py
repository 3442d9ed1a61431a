"""The `minichord` commands: demo pretrain train eval chat export check reproduce data plot samples (--help)."""

import argparse
import json
import signal
import sys
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # a Ctrl-C while the modules below load (seconds) is never
try:  # ignored (as a shell's background job would have it) and is one line, not a traceback
    import torch

    from minichord.check.recompute import ATOL, RTOL
    from minichord.config import CONVENTIONS, DEVICES, DTYPES, REWARDS, SamplerConfig, TrainConfig
    from minichord.data import check_lengths, load_prompts, rewards, write_jsonl
    from minichord.device import autocast, resolve_device
    from minichord.evaluate import MAX_NEW_TOKENS as EVAL_MAX_NEW_TOKENS, evaluate_splits
    from minichord.hf import export_checkpoint, is_hf_dir, is_hub_id, load_model
    from minichord.methods import METHODS
    from minichord.sampler import generate
    from minichord.tasks import make_splits, rg
except KeyboardInterrupt:
    sys.exit("minichord: interrupted while starting; nothing was done")

CHAT_MAX_NEW_TOKENS = 256  # `minichord chat`'s answer length limit: a chat answer is longer than a test answer


def _checked(ok, allowed: str, convert=str):  # an argparse `type`: failing `ok` is its one-line error (exit 2)
    def parse(text: str):
        if not ok(text):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {allowed}")
        return convert(text)
    return parse


def _is_number(text: str) -> bool:
    try:
        return float(text) < float("inf")
    except ValueError:
        return False


POSITIVE = _checked(lambda t: t.isdigit() and int(t) >= 1, "an integer >= 1", int)
POSITIVE_FLOAT = _checked(lambda t: _is_number(t) and float(t) > 0, "a number > 0", float)
COUNT = SEED = _checked(str.isdigit, "an integer >= 0", int)
FILE = _checked(lambda t: Path(t).is_file(), "a readable file")
FILES = _checked(lambda t: all(Path(f).is_file() for f in t.split(",")), "readable files, comma-separated")
OUT = _checked(lambda t: not Path(t).exists() or Path(t).is_dir(), "a directory (or a new path), not an existing file")


def add_hardware(parser: argparse.ArgumentParser) -> None:  # minichord/device.py
    parser.add_argument("--device", choices=DEVICES, help="auto (default: cuda if available, else cpu), cpu or cuda")
    parser.add_argument("--dtype", choices=DTYPES, help="fp32 (default) or bf16 (autocast; weights, loss math fp32)")


def hardware(args) -> list[str]:  # --device / --dtype as TrainConfig overrides (after any --set: the flags win)
    return [f"{key}={getattr(args, key)}" for key in ("device", "dtype") if getattr(args, key) is not None]


def cmd_demo(args) -> None:
    from minichord.runners import run_demo

    run_demo(Path(args.out), steps=args.steps, seed=args.seed, hardware=tuple(hardware(args)), overrides=tuple(args.set))


def cmd_pretrain(args) -> None:
    from minichord.pretrain import default_base_dir, pretrain_base

    path = pretrain_base(Path(args.out) if args.out else default_base_dir(), seed=args.seed, steps=args.steps,
                         device=resolve_device(args.device or "auto"), dtype=args.dtype or "fp32")
    print(f"base model: {path}")


def cmd_train(args) -> None:
    from minichord.trainer import prepare_run

    named = {"init": args.model, "prompts_file": args.prompts, "experts_file": args.experts, "eval_file": args.eval}
    overrides = args.set + [f"{k}={v}" for k, v in named.items() if v is not None] + hardware(args)  # flags win
    trainer = prepare_run(args.method, args.out, config_file=args.config, overrides=overrides,
                          resume=not args.no_resume)
    try:
        final = trainer.run()
        trainer.ranks.barrier()  # every rank is done (rank 0 saved) before the process group goes
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if not trainer.ranks.is_main:
        return
    print(f"run directory: {args.out} (metrics.jsonl, eval.jsonl, samples.jsonl, checkpoint/)")
    if final:
        print(json.dumps({k: v["accuracy"] for k, v in final.items() if isinstance(v, dict)}))


def cmd_eval(args) -> None:
    path = args.model or args.checkpoint
    if not path:
        raise ValueError("give a model: --model DIR (a Hugging Face directory or a minichord checkpoint)")
    if is_hf_dir(path) and not args.prompts:
        raise ValueError(f"{path} is a Hugging Face model: give --prompts FILE (the toy splits are for the toy model)")
    device = resolve_device(args.device or "auto")
    splits = ({Path(args.prompts).stem: load_prompts(args.prompts)} if args.prompts
              else make_splits(args.seed, n_rl=0, n_expert=0, n_test=args.n_test).tests)
    model, tokenizer = load_model(path)
    check_lengths(problems := [p for s in splits.values() for p in s], tokenizer, model.cfg.max_seq_len, 1)
    reward_fn, lenient_fn = rewards(args.reward, "tokenizer_config.json" in tokenizer.files(), problems)
    result = evaluate_splits(model.to(device), tokenizer, splits, dtype=args.dtype or "fp32",
                             max_new_tokens=args.max_new_tokens, reward_fn=reward_fn, lenient_fn=lenient_fn)
    for name, m in result.items():
        lenient = f", lenient {m['lenient_accuracy']:.3f}" if "lenient_accuracy" in m else ""
        print(f"{name:14s} accuracy {m['accuracy']:.3f}{lenient}  (n={m['n']}, mean length {m['response_length']:.1f})")


def cmd_chat(args) -> None:
    device = resolve_device(args.device or "auto")
    model, tokenizer = load_model(args.model)
    prompt = tokenizer.encode_prompt(args.question)
    room = model.cfg.max_seq_len - len(prompt)
    if room < 1:
        raise ValueError(f"the question is {len(prompt)} tokens: no room left in max_seq_len={model.cfg.max_seq_len}")
    cfg = SamplerConfig(max_new_tokens=min(args.max_new_tokens, room), greedy=args.temperature == 0,
                        temperature=args.temperature or 1.0)
    with autocast(device, args.dtype or "fp32"):
        out = generate(model.to(device), [prompt], cfg, eos_id=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                       vocab_size=tokenizer.vocab_size, generator=torch.Generator(device).manual_seed(args.seed))
    print(tokenizer.decode(out.tokens[0][out.mask[0]]))


def cmd_export(args) -> None:
    print(f"wrote {export_checkpoint(args.checkpoint, args.out_dir)} (Hugging Face format: config.json, "
          f"model.safetensors, tokenizer files)")


def cmd_check(args) -> int:
    from minichord.check import catalogue_lines, check_batch
    from minichord.check.golden import run_golden

    if args.list:
        return print(catalogue_lines()) or 0
    if bool(args.dump) == bool(args.golden):
        raise ValueError("give either DUMP file(s) or --golden module:function")
    if args.golden:
        return run_golden(args.golden, args.convention or "paper", print)
    result = check_batch(args.dump, args.convention, rtol=args.rtol, atol=args.atol)
    print(result.report())
    return 0 if result.match else 1


def cmd_reproduce(args) -> None:
    from minichord.runners import reproduce

    reproduce(args.out, quick=args.quick, seeds=args.seeds, methods=args.methods, steps=args.steps,
              overrides=args.set + hardware(args), sft_curve_steps=args.sft_curve_steps)


def cmd_data(args) -> None:
    held_out = frozenset(p.prompt for f in args.exclude for p in load_prompts(f))
    entries = rg.make_entries(args.task, args.size, args.seed, rg.parse_options(args.option), args.templates, held_out)
    experts = [dict(prompt=e["question"], response=rg.expert_response(args.task, e), answer=str(e["answer"]))
               for e in entries] if args.experts else []  # all written before any file: a refusal leaves none
    write_jsonl(args.out, [dict(prompt=e["question"], answer=str(e["answer"]), skill=rg.PREFIX + rg.task_name(
        args.task), metadata=e["metadata"]) for e in entries])
    print(f"wrote {len(entries)} prompt rows to {args.out}" + (f", {len(experts)} expert traces to "
                                                                f"{write_jsonl(args.experts, experts)}" if experts else ""))


def cmd_plot(args) -> None:
    from minichord.runners import plot_runs

    print(f"wrote {plot_runs([Path(d) for d in args.runs], Path(args.output))}")


def cmd_samples(args) -> None:
    from minichord.runners import print_samples

    print_samples(Path(args.run), steps=args.step, prompt=args.prompt)


COMMANDS = {name.removeprefix("cmd_"): f for name, f in list(globals().items()) if name.startswith("cmd_")}
MODEL_DIR = _checked(lambda t: Path(t).is_dir() or is_hub_id(t), "an existing directory (this one is not found "
                    "or a file: a Hugging Face model or a minichord checkpoint) or a Hub id owner/name[@revision]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minichord", description="CHORD (arXiv 2508.11408) from scratch: "
                                "on-policy RL with dynamically weighted SFT on expert data.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="pre-train (or reuse) the toy base model, run CHORD-phi, compare before/after")
    d.add_argument("--out", type=OUT, default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--steps", type=POSITIVE, help="training steps (default: the demo's setting)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig override, e.g. "
                   "init=DIR prompts_file=F experts_file=F eval_file=F1,F2 for a real model (make real-demo)")
    d.add_argument("--seed", type=SEED, default=0, help="random seed")

    pt = sub.add_parser("pretrain", help="pre-train the toy base model (cached; reused when settings match)")
    pt.add_argument("--out", type=OUT,
                    help="directory (default $MINICHORD_HOME/toy-base, else ~/.cache/minichord/toy-base)")
    pt.add_argument("--steps", type=POSITIVE, help="optimizer steps (default: the tuned setting)")
    pt.add_argument("--seed", type=SEED, default=0, help="random seed")

    t = sub.add_parser("train", help="train with one method preset; resumes from OUT/checkpoint if present")
    t.add_argument("--method", required=True, choices=sorted(METHODS), help="method preset")
    t.add_argument("--config", type=FILE, help="TOML file of TrainConfig fields")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set steps=50 --set sampler.temperature=0.8")
    t.add_argument("--model", type=MODEL_DIR, help="start from this Hugging Face model (a directory "
                   "or a Hub id) or minichord checkpoint (= --set init=...; default: the toy base model)")
    t.add_argument("--prompts", type=FILE, help="RL prompts JSONL (= --set prompts_file=FILE)")
    t.add_argument("--experts", type=FILE, help="expert demonstrations JSONL (= --set experts_file=FILE)")
    t.add_argument("--eval", type=FILES, help="held-out prompts JSONL, FILE[,FILE...], one split per file, named by "
                   "its stem (= --set eval_file=...)")
    t.add_argument("--out", type=OUT, required=True, help="run directory")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/checkpoint exists")

    e = sub.add_parser("eval", help="greedy accuracy of a model on the toy test splits (or a JSONL file)")
    e.add_argument("checkpoint", nargs="?", type=MODEL_DIR, help="checkpoint directory (or --model)")
    e.add_argument("--model", type=MODEL_DIR, help="a Hugging Face model (directory or Hub id) or a checkpoint")
    e.add_argument("--reward", choices=REWARDS, default=TrainConfig.reward, help="exact: the toy's answer match; math: "
                   "strict format + lenient last number; math-verify: HF's math-verify (auto: math for a chat model)")
    e.add_argument("--max-new-tokens", type=POSITIVE, default=EVAL_MAX_NEW_TOKENS, help="answer length limit (tokens)")
    e.add_argument("--n-test", type=POSITIVE, default=TrainConfig.n_test, help="problems per toy split")
    e.add_argument("--seed", type=SEED, default=0, help="seed of the toy splits")
    e.add_argument("--prompts", type=FILE, help="JSONL file of {prompt, answer} to evaluate instead")

    c = sub.add_parser("chat", help="what a model answers to one question (its chat template, greedy by default)")
    c.add_argument("question", help="the user message")
    c.add_argument("--model", type=MODEL_DIR, required=True, help="a Hugging Face model (directory or Hub id) or a "
                   "checkpoint")
    c.add_argument("--max-new-tokens", type=POSITIVE, default=CHAT_MAX_NEW_TOKENS, help="answer length limit (tokens)")
    c.add_argument("--temperature", type=_checked(lambda t: _is_number(t) and float(t) >= 0, "a number >= 0", float),
                   default=0.0, help="0 = greedy (default); > 0 samples")
    c.add_argument("--seed", type=SEED, default=0, help="random seed when sampling")

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face directory (transformers, vLLM load it)")
    x.add_argument("checkpoint", type=MODEL_DIR, help="minichord checkpoint (a run's checkpoint/ or a step directory)")
    x.add_argument("out_dir", type=OUT, help="a new or empty directory, or an earlier export (replaced atomically)")

    r = sub.add_parser("reproduce", help="every method x seeds on the toy task: table, JSON, curves")
    r.add_argument("--out", type=OUT, required=True, help="output directory")
    r.add_argument("--quick", action="store_true", help="1 seed, few steps (about 5 minutes on 2 cores)")
    r.add_argument("--seeds", type=POSITIVE, help="number of seeds (default 3, quick 1)")
    r.add_argument("--methods", nargs="+", choices=sorted(METHODS), help="subset of methods")
    r.add_argument("--steps", type=POSITIVE, help="optimizer steps per run (matched across methods)")
    r.add_argument("--sft-curve-steps", type=COUNT, help="steps of a long SFT run (0 skips it)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --set init=PATH to start from another checkpoint")

    ck = sub.add_parser("check", help="your CHORD loss and gradient against minichord's, with a diagnosis "
                        "(DUMP schema: minichord/check/README.md), or your loss function over the golden cases")
    ck.add_argument("dump", nargs="*", help="a safetensors DUMP of one batch, or one per rank of a data-parallel "
                    "step (exit 0 match, 1 mismatch)")
    ck.add_argument("--list", action="store_true", help="the conventions and known bugs minichord knows, with sources")
    ck.add_argument("--golden", metavar="MODULE:FUNCTION", help="run FUNCTION of MODULE (the current directory is "
                    "searched) on every golden case of the convention (signature: minichord/check/README.md)")
    ck.add_argument("--convention", choices=CONVENTIONS,
                    help="the convention you meant to implement (default: the dump's metadata, else paper)")
    ck.add_argument("--rtol", type=POSITIVE_FLOAT, default=RTOL, help=f"relative tolerance ({RTOL:g})")
    ck.add_argument("--atol", type=POSITIVE_FLOAT, default=ATOL, help=f"absolute tolerance x the scale ({ATOL:g})")

    for cmd in (d, pt, t, e, c, r):  # every command that runs a model
        add_hardware(cmd)

    da = sub.add_parser("data", help="a reasoning-gym task as JSONL prompt rows (+ worked expert traces); needs "
                        'pip install "minichord[tasks]"')
    da.add_argument("task", help="rg:NAME, a reasoning-gym dataset, e.g. rg:chain_sum")
    da.add_argument("--out", required=True, help="the prompt rows' JSONL file (written atomically)")
    da.add_argument("--experts", help="also write a worked trace per entry to this JSONL file (tasks: "
                    "chain_sum, products, leg_counting, gsm_symbolic)")
    da.add_argument("--size", type=POSITIVE, default=1000, help="entries (default 1000)")
    da.add_argument("--seed", type=SEED, default=0, help="reasoning-gym's seed (held-out data: another seed)")
    da.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option, passed through (JSON value), e.g. --option min_terms=2")
    da.add_argument("--exclude", action="append", default=[], metavar="FILE", help="leave out prompts that are "
                    "in this JSONL prompt file (held-out test data; repeatable)")
    da.add_argument("--templates", choices=("all", "train", "test"), default="all", help="template tasks "
                    "(gsm_symbolic): template index %% 5 == 0 is test, the rest train (default all)")

    pl = sub.add_parser("plot", help="plot the curves of run directories into one PNG (needs matplotlib)")
    pl.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl / eval.jsonl)")
    pl.add_argument("-o", "--output", required=True, help="PNG file to write")

    sm = sub.add_parser("samples", help="a run's greedy answers to its fixed prompts (samples.jsonl), across steps")
    sm.add_argument("run", help="run directory (holding samples.jsonl)")
    sm.add_argument("--step", type=COUNT, nargs="+", help="only these steps (default: every step in the file)")
    sm.add_argument("--prompt", type=COUNT, help="only this prompt (its index, from 0)")
    return p


def run_command(name: str, command, args) -> int:
    """command(args)'s exit code; a refusal is one line `NAME: error: ...` (exit 2), Ctrl-C one line (exit 130)."""
    from minichord.checkpoint import CheckpointError
    from minichord.distributed import RankError
    from minichord.trainer import TrainingError

    try:
        code = command(args)
    except (CheckpointError, TrainingError, RankError, OSError, ValueError) as e:  # ValueError: ConfigError, ...
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return code or 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"minichord {args.command}", COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
