"""Every bad input gets ONE clear line: the file and line (or the key and value) and what is
allowed, a non-zero exit, never a traceback, never a silent accept, never a hang, and nothing on
disk lost. One test per class of input, then a seeded mutation test over configs, `--set`
overrides and JSONL files. No test here pre-trains the base model (`init` is always given)."""

import dataclasses
import json
import random
import time

import pytest
import torch

from minichord.checkpoint import CheckpointError, save_checkpoint
from minichord.cli import main
from minichord.config import ConfigError, ModelConfig, SamplerConfig, TrainConfig, load_config
from minichord.data import DataError, check_lengths, load_experts, load_prompts
from minichord.model import Transformer
from minichord.tasks import style_texts
from minichord.tokenizer import Tokenizer, TokenizerError
from minichord.data import build_train_data

OWN_ERRORS = (ConfigError, DataError, TokenizerError, CheckpointError)
MAX_SEQ_LEN = 128
TINY = ["steps=1", "n_test=3", "n_rl_prompts=20", "n_expert=8", "sampler.max_new_tokens=8", "prompts_per_step=2",
        "group_size=2", "experts_per_step=2", "eval_every=1", "save_every=1"]
GOOD_PROMPT = {"prompt": "add 12 34", "answer": "46"}
GOOD_EXPERT = {"prompt": "add 12 34", "response": "2+4=6 carry 0\n1+3=4 carry 0\nanswer: 46"}
GOOD_GSM8K = {"question": "add 12 34", "answer": "2+4 = <<2+4=6>>6\n1+3 = <<1+3=4>>4\n#### 46"}
GOOD_MATH = {"problem": "add 12 34", "solution": "so $\\boxed{46}$", "level": "Level 1", "type": "add"}


@pytest.fixture(autouse=True)
def never_pretrain(tmp_path, monkeypatch):
    """Pre-training the real base takes ~50 s: any test reaching it fails instead."""
    import minichord.pretrain

    monkeypatch.setenv("MINICHORD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(minichord.pretrain, "pretrain_base", lambda *a, **k: pytest.fail("a test pre-trained"))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)


@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=MAX_SEQ_LEN))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", model, tokenizer=tok)


@pytest.fixture
def run_dir(tmp_path):
    """An existing run directory whose files must survive every refused command."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    (out / "notes.txt").write_text("keep me\n")
    return out


def snapshot(root):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, argv):
    """Run the CLI in-process: a non-zero exit and one `error:` line on stderr, no traceback."""
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage, then its one error line, exit 2
        code = e.code
    assert time.perf_counter() - t0 < 30, f"{argv} took too long to refuse (a hang guard, not a timing)"
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err
    line = err.rstrip("\n").splitlines()[-1]
    assert line.startswith("minichord ") and ": error: " in line, err
    return line


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# ---- one test per class -----------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("eval_every=0", "eval_every=0: must be an integer >= 1"),
    ("save_every=0", "save_every=0: must be an integer >= 1"),
    ("minibatches=0", "minibatches=0: must be an integer >= 1"),
    ("ppo_epochs=0", "ppo_epochs=0: must be an integer >= 1"),
    ("steps=0", "steps=0: must be an integer >= 1"),
    ("group_size=1", "group_size=1: must be an integer >= 2"),
    ("lr=0", "lr=0.0: must be a finite number > 0"),
    ("lr=inf", "lr=inf: must be a finite number > 0"),
    ("grad_clip=-1", "grad_clip=-1.0: must be a finite number > 0"),
    ("grad_clip=nan", "grad_clip=nan: must be a finite number > 0"),
    ("mu_decay_frac=inf", "mu_decay_frac=inf: must be a finite number in [0, 1]"),
    ("mu_warmup_frac=0.7 mu_decay_frac=0.5", "mu_warmup_frac + mu_decay_frac = 1.2: must be <= 1"),
    ("loss.eps_low=1", "eps_low=1.0: must be a finite number in [0, 1)"),
    ("loss.dual_clip=0.5", "dual_clip=0.5: must be a finite number > 1"),
    ("sampler.temperature=nan", "temperature=nan: must be a finite number > 0"),
    ("sampler.temperature=inf", "temperature=inf: must be a finite number > 0"),
    ("sampler.top_p=0", "top_p=0.0: must be a finite number in (0, 1]"),
    ("seed=-1", "seed=-1: must be an integer in"),
    ("steps=true", "steps: cannot read 'true' as int"),
    ("n_test=-1", "n_test=-1: must be an integer >= 0"),
    ("samples_every=-1", "samples_every=-1: must be an integer >= 0"),
])
def test_config_values_one_line(ckpt, run_dir, capsys, override, message):
    before = snapshot(run_dir)
    argv = ["train", "--method", "chord-phi", "--out", str(run_dir), "--set", f"init={ckpt}",
            *sum((["--set", o] for o in [*TINY, *override.split()]), [])]
    line = refused(capsys, argv)
    assert "error: TrainConfig" in line and message in line, line
    assert snapshot(run_dir) == before


def test_config_files_one_line(ckpt, run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    base = ["train", "--method", "grpo", "--out", str(run_dir), "--set", f"init={ckpt}", *sum((["--set", o] for o in TINY), [])]
    assert "--config: " in refused(capsys, [*base, "--config", str(tmp_path)])  # a directory
    assert "nope.toml': must be a readable file" in refused(capsys, [*base, "--config", str(tmp_path / "nope.toml")])
    for text, message in [("lr = = 3", "invalid TOML"), ("lr = [" * 3000 + "]" * 3000, "invalid TOML"),
                          ("lr = {a = 1}", "lr: cannot read"), ("prompts_file = 3", "prompts_file: cannot read 3 as str"),
                          ("[sampler]\ntop_k = -1", "top_k=-1: must be an integer >= 0"),
                          ("steps = 10\nstepz = 3", "did you mean 'steps'")]:
        (tmp_path / "c.toml").write_text(text)
        line = refused(capsys, [*base, "--config", str(tmp_path / "c.toml")])
        assert str(tmp_path / "c.toml") in line and message in line, line
    (tmp_path / "c.toml").write_bytes(b"init = '\xff'\n")
    assert "invalid TOML" in refused(capsys, [*base, "--config", str(tmp_path / "c.toml")])
    assert snapshot(run_dir) == before


def test_cli_arguments_argparse_one_line(ckpt, run_dir, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("precious\n")
    before = {**snapshot(run_dir), **snapshot(tmp_path / "run")}
    for argv, message in [
        (["pretrain", "--steps", "0"], "--steps: '0': must be an integer >= 1"),
        (["pretrain", "--steps", "-5", "--out", str(run_dir)], "--steps: '-5': must be an integer >= 1"),
        (["pretrain", "--seed", "-1"], "--seed: '-1': must be an integer >= 0"),
        (["eval", str(ckpt), "--n-test", "0"], "--n-test: '0': must be an integer >= 1"),
        (["eval", str(ckpt), "--n-test", "ten"], "--n-test: 'ten': must be an integer >= 1"),
        (["eval", str(ckpt), "--prompts", str(tmp_path)], "--prompts: "),
        (["demo", "--steps", "0"], "--steps: '0': must be"),
        (["reproduce", "--out", str(tmp_path / "r"), "--seeds", "0"], "--seeds: '0': must be"),
        (["reproduce", "--out", str(tmp_path / "r"), "--sft-curve-steps", "-1"], "--sft-curve-steps: '-1': must be"),
        (["train", "--method", "grpo", "--out", str(a_file), "--set", f"init={ckpt}"], "not an existing file"),
        (["pretrain", "--out", str(a_file)], "not an existing file"),
    ]:
        assert message in refused(capsys, argv), argv
    assert a_file.read_text() == "precious\n"
    assert {**snapshot(run_dir)} == before
    assert not (tmp_path / "r").exists()


def test_jsonl_files_one_line_with_file_and_line(ckpt, run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    base = ["train", "--method", "chord-phi", "--out", str(run_dir), "--set", f"init={ckpt}", *sum((["--set", o] for o in TINY), [])]
    cases = [
        ("p.jsonl", [GOOD_PROMPT, "[" * 100_000 + "]" * 100_000], "p.jsonl:2: invalid JSON: nested too deeply"),
        ("p.jsonl", [GOOD_PROMPT, '{"prompt": "add \\ud800", "answer": "1"}'], ("p.jsonl:2: 'utf-8' codec can't encode", "surrogates not allowed")),
        ("p.jsonl", [GOOD_PROMPT, GOOD_PROMPT, {"prompt": "add " + "1 " * 200, "answer": "1"}],
         ("p.jsonl:3: prompt of ", " tokens + max_new_tokens=8 > max_seq_len=128")),
        ("p.jsonl", [GOOD_PROMPT, {"prompt": "add 1 é", "answer": "1"}], "p.jsonl:2: text contains characters"),
        ("p.jsonl", [{"prompt": "x", "answer": str(i)} for i in range(30)] + ["{"] * 30, "30 invalid line(s)"),
        ("e.jsonl", [GOOD_EXPERT, {**GOOD_EXPERT, "response": "1\n" * 100}],
         ("e.jsonl:2: prompt + response is ", " tokens > the model's max_seq_len=128")),
        ("e.jsonl", [GOOD_EXPERT, {"prompt": "a", "response": 3}], "e.jsonl:2: 'response' must be a string"),
    ]
    for name, records, message in cases:
        path = write_jsonl(tmp_path / name, records)
        key = "prompts_file" if name.startswith("p") else "experts_file"
        line = refused(capsys, [*base, "--set", f"{key}={path}"])
        assert all(m in line for m in ([message] if isinstance(message, str) else message)), line
    assert snapshot(run_dir) == before
    # `eval --prompts`: the same checks, one line
    bad = write_jsonl(tmp_path / "q.jsonl", [GOOD_PROMPT, {"prompt": "add " + "9" * 200, "answer": "9"}])
    assert "q.jsonl:2: prompt of " in refused(capsys, ["eval", str(ckpt), "--prompts", str(bad)])
    write_jsonl(bad, ['{"prompt": 1}'])
    assert "q.jsonl:1: " in refused(capsys, ["eval", str(ckpt), "--prompts", str(bad)])


def test_tokenizer_and_checkpoint_one_line(tok, ckpt, tmp_path, capsys):
    """An eos id beyond the vocabulary would make generation never stop: refused at load."""
    d = json.loads(tok.to_json())
    d["model"]["vocab"]["<|eos|>"] = 500
    next(t for t in d["added_tokens"] if t["content"] == "<|eos|>")["id"] = 500
    with pytest.raises(TokenizerError, match="eos='<\\|eos\\|>' has id 500") as err:
        Tokenizer.from_json(json.dumps(d))
    assert "\n" not in str(err.value)
    from tokenizers import Tokenizer as HFTokenizer

    bad_tok = Tokenizer.from_json(tok.to_json())
    bad_tok._tok = HFTokenizer.from_str(json.dumps(d))  # bypass the check to write such a file
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64))
    bad = save_checkpoint(tmp_path / "bad_tok", model, tokenizer=bad_tok)
    assert "has id 500" in refused(capsys, ["eval", str(bad), "--n-test", "3"])
    no_tok = save_checkpoint(tmp_path / "no_tok", model)
    assert "no tokenizer.json" in refused(capsys, ["eval", str(no_tok), "--n-test", "3"])
    out = tmp_path / "run"
    assert "no tokenizer.json" in refused(capsys, ["train", "--method", "sft", "--out", str(out), "--set", f"init={no_tok}"])
    assert not (out / "checkpoint").exists()
    assert "not found" in refused(capsys, ["eval", str(tmp_path / "nope")])
    with pytest.raises(TokenizerError, match="lone surrogate"):
        tok.encode("add \ud800")


def test_split_sizes_fail_fast_with_the_number_possible(ckpt, run_dir, capsys):
    before = snapshot(run_dir)
    line = refused(capsys, ["train", "--method", "grpo", "--out", str(run_dir), "--set", f"init={ckpt}",
                            "--set", "n_rl_prompts=10000000"])
    assert "n_rl_prompts=10000000" in line and "the 202500 distinct add prompts" in line  # 3-digit sums / 4
    line = refused(capsys, ["eval", str(ckpt), "--n-test", "10000000"])
    assert "n_test=10000000" in line and "202500" in line
    assert snapshot(run_dir) == before


# ---- the mutation test ------------------------------------------------------------------------

def _one_line(e: BaseException) -> None:
    assert isinstance(e, OWN_ERRORS), f"{type(e).__name__}: {e}"
    assert "\n" not in str(e) and str(e).strip(), repr(e)


def _attempt(outcomes: list, label: str, fn) -> bool:
    """Run fn: accepted (True) or one of minichord's errors with a one-line message, within 5 s."""
    t0 = time.perf_counter()
    try:
        fn()
        ok = True
    except OWN_ERRORS as e:
        _one_line(e)
        ok = False
    assert time.perf_counter() - t0 < 5, f"{label} took {time.perf_counter() - t0:.1f}s"
    outcomes.append((label, ok))
    return ok


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    return str(value)


def _config_mutations(rng: random.Random) -> list[tuple[str, str]]:
    """(label, TOML text): every field of TrainConfig and SamplerConfig, each malformed 10 ways."""
    fields = [(None, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name not in ("method", "expert_weighting", "sampler")]
    fields += [("sampler", f.name) for f in dataclasses.fields(SamplerConfig)]
    out = []
    for table, name in fields:
        misspelt = name[:-1] if len(name) > 3 else name + "x"
        for kind, value in [("wrong type", "abc" if rng.random() < 0.5 else [1, 2]), ("zero", 0), ("negative", -1),
                            ("nan", float("nan")), ("inf", float("inf")), ("huge", 10**30), ("empty", ""),
                            ("table", {"a": 1})]:
            line = f"{name} = {_toml(value)}" if not isinstance(value, list) else f"{name} = [1, 2]"
            out.append((f"{table or ''}.{name} {kind}", f"[{table}]\n{line}\n" if table else line + "\n"))
        for kind, key in [("unknown key", f"zz_{name}"), ("misspelt key", misspelt)]:
            line = f"{key} = 1"
            out.append((f"{table or ''}.{name} {kind}", f"[{table}]\n{line}\n" if table else line + "\n"))
    return out


SET_MUTATIONS = ["steps", "steps=", "=5", "steps=abc", "steps=0x10", "steps=1e3", "steps= 7 ", "steps=2.5",
                 "lr=1e-400", "lr=-0", "lr=１", "lr=1e-3", "sampler=3", "sampler.temperature.x=1",
                 "sampler.top_p=1.0000001", "sampler.greedy=maybe", "sampler.greedy=on", "seed=4294967296",
                 "seed=4294967295", "loss.dual_clip=none", "loss.dual_clip=", "loss.dual_clip=1.5", "n_test=-0", "n_test=+3",
                 "group_size=1e400", "model.dim=3", "mu_peak=1.0", "mu_valley=-1e-9", "loss.kl_coef=1e308",
                 "loss.eps_high=nan", "loss.entropy_coef=True", "prompts_per_step=99999999999999999999",
                 "steps=" + "9" * 5000, "init=" + "x" * 10_000, "sampler.max_new_tokens=0", "sampler.top_k=-0"]


def _jsonl_mutations(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(label, kind, file bytes): valid prompt / expert files, each malformed in one line."""
    out = []
    for kind, good in (("prompts", GOOD_PROMPT), ("experts", GOOD_EXPERT)):
        lines = [json.dumps({**good, "prompt": f"add {10 + i} {20 + i}"}) for i in range(4)]
        key = rng.choice(sorted(good))
        variants = {
            "valid": lines,
            "truncated": [lines[0], lines[1][: rng.randrange(1, len(lines[1]) - 1)], *lines[2:]],
            "int value": [lines[0], json.dumps({**good, key: 7})],
            "list value": [lines[0], json.dumps({**good, key: ["a"]})],
            "null value": [lines[0], json.dumps({**good, key: None})],
            "dict value": [lines[0], json.dumps({**good, key: {"a": "b"}})],
            "empty value": [lines[0], json.dumps({**good, key: ""})],
            "missing key": [lines[0], json.dumps({k: v for k, v in good.items() if k != key})],
            "extra key": [lines[0], json.dumps({**good, "extra": "x"})],
            "deep nesting": [lines[0], "[" * 50_000 + "]" * 50_000],
            "deep object": [lines[0], '{"prompt": ' + '{"a": ' * 20_000 + "1" + "}" * 20_001],
            "surrogate": [lines[0], json.dumps({**good, "prompt": "add \ud800 1"})],
            "escaped surrogate": [lines[0], '{"prompt": "add \\udfff", "answer": "1", "response": "1"}'],
            "huge string": [lines[0], json.dumps({**good, "prompt": "add " + "7" * 100_000})],
            "overlong prompt": [lines[0], json.dumps({**good, "prompt": "copy " + "5" * 300})],
            "overlong response": [lines[0], json.dumps({**good, "response": "3\n" * 200})],
            "not an object": [lines[0], json.dumps([good])],
            "number line": [lines[0], "42"],
            "non-ascii": [lines[0], json.dumps({**good, "prompt": "add ü 1"})],
            "empty file": [],
            "only blanks": ["", "  "],
            "messages form": [json.dumps({"messages": [{"role": "user", "content": "add 1 2"},
                                                       {"role": "assistant", "content": "3"}]})],
            "bad messages": [json.dumps({"messages": [{"role": "assistant", "content": "3"}]})],
            "nan number": [lines[0], lines[1].replace("}", ', "n": NaN}')],
        }
        for label, body in variants.items():
            data = "".join(line + "\n" for line in body).encode("utf-8", "surrogatepass")
            out.append((f"{kind} {label}", kind, data))
        out.append((f"{kind} BOM", kind, b"\xef\xbb\xbf" + "".join(line + "\n" for line in lines).encode()))
        out.append((f"{kind} CRLF", kind, "".join(line + "\r\n" for line in lines).encode()))
        out.append((f"{kind} latin-1", kind, lines[0].encode() + b"\n" + lines[1].replace("add", "add \xe9").encode("latin-1")))
        out.append((f"{kind} no final newline", kind, "\n".join(lines).encode()))
    for kind in ("prompts", "experts"):  # GSM8K and MATH rows: read by either loader
        for form, good, broken in (("gsm8k", GOOD_GSM8K, {"answer": "2+4 = 6, 1+3 = 4: 46"}),
                                   ("math", GOOD_MATH, {"solution": "so 46"})):
            variants = {"valid": [good, good], "no final answer": [good, {**good, **broken}],
                        "mixed formats": [good, {**good, "prompt": "add 1 2"}], "extra key": [good, {**good, "extra": "x"}],
                        "int value": [good, {**good, rng.choice(sorted(set(good) - {"level", "type"})): 46}]}
            for label, rows in variants.items():
                out.append((f"{kind} {form} {label}", kind, "".join(json.dumps(r) + "\n" for r in rows).encode()))
    return out


def test_mutations_are_accepted_or_refused_in_one_line(tok, ckpt, tmp_path, capsys):
    rng = random.Random(0)
    outcomes: list = []
    accepted_runs = []
    for label, text in _config_mutations(rng):
        path = tmp_path / "c.toml"
        path.write_text(text)
        box = {}
        if _attempt(outcomes, f"toml {label}", lambda: box.update(cfg=load_config(TrainConfig, path))):
            cfg = box["cfg"]
            if cfg.prompts_file or cfg.experts_file or label.split()[0] in (".n_rl_prompts", ".n_expert", ".n_test"):
                outcomes.pop()
                _attempt(outcomes, f"toml {label} + data", lambda: build_train_data(cfg))
            if len(accepted_runs) < 2 and "sampler" in label:
                keep = path.with_name(f"accepted{len(accepted_runs)}.toml")
                keep.write_text(text)
                accepted_runs.append(["--config", str(keep)])
    for override in SET_MUTATIONS:
        if _attempt(outcomes, f"--set {override[:40]}", lambda: load_config(TrainConfig, overrides=[override])) \
                and len(accepted_runs) < 4:
            accepted_runs.append(["--set", override])
    for label, kind, data in _jsonl_mutations(rng):
        path = tmp_path / f"{kind}.jsonl"
        path.write_bytes(data)
        load = load_prompts if kind == "prompts" else load_experts
        _attempt(outcomes, f"jsonl {label}", lambda: check_lengths(load(path), tok, MAX_SEQ_LEN, 8))
    # a handful of accepted inputs really train one step (the tiny checkpoint; never the real base)
    good = tmp_path / "good.jsonl"
    good.write_text("\ufeff" + "".join(json.dumps({**GOOD_PROMPT, "prompt": f"add {i} 1", "answer": str(i + 1)}) + "\r\n"
                                       for i in range(10, 14)))
    accepted_runs.append(["--set", f"prompts_file={good}"])
    for i, extra in enumerate(accepted_runs):
        out = tmp_path / f"run{i}"
        argv = ["train", "--method", "chord-phi", "--out", str(out), "--set", f"init={ckpt}",
                *sum((["--set", o] for o in TINY), []), *extra, "--set", "steps=1"]  # bounded, whatever was accepted
        code = main(argv)
        err = capsys.readouterr().err
        if code != 0:  # an accepted config may still be refused by the run (e.g. its toy splits): one line
            assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
        else:
            assert (out / "checkpoint").is_dir(), extra
        outcomes.append((f"run {extra}", code == 0))
    results = dict(outcomes)
    for kind in ("prompts", "experts"):
        for form in ("gsm8k", "math"):
            assert results[f"jsonl {kind} {form} valid"], (kind, form)
            assert not any(results[f"jsonl {kind} {form} {label}"]
                           for label in ("no final answer", "mixed formats", "extra key", "int value")), (kind, form)
    n_ok = sum(ok for _, ok in outcomes)
    print(f"mutations: {len(outcomes)} ({n_ok} accepted, {len(outcomes) - n_ok} refused in one line)")
    assert len(outcomes) >= 150
    assert n_ok >= 10 and len(outcomes) - n_ok >= 100  # both outcomes really happen
    assert sum(code for label, code in outcomes if label.startswith("run")) >= 3  # real 1-step runs succeeded


@pytest.mark.parametrize("method, settings, message", [
    ("chord-phi", ["n_expert=0"], "method chord-phi needs expert demonstrations: n_expert=0"),
    ("luffy", ["n_expert=0"], "method luffy needs expert demonstrations"),
    ("sft-is", ["experts_per_step=0"], "experts_per_step=0: method sft-is has mu > 0"),
    ("grpo", ["n_rl_prompts=0"], "method grpo needs RL prompts: n_rl_prompts=0"),
])
def test_a_method_without_its_data_is_refused_before_any_model_loads(capsys, run_dir, method, settings, message):
    before = snapshot(run_dir)  # no init: reaching the base model would pre-train, which never_pretrain fails
    argv = ["train", "--method", method, "--out", str(run_dir), *sum((["--set", s] for s in settings), [])]
    assert message in refused(capsys, argv)
    assert snapshot(run_dir) == before
