"""The real-model setting, cut down: SmolLM2-135M-Instruct on reasoning-gym rows (`make real-probe`, `make real-demo`
at a few steps). Checks the plumbing and the tables' shape, not the criteria (a 2-step run cannot meet them)."""

import json

import pytest

from conftest import load_script
from minichord.cli import main
from test_real_model import model_dir  # noqa: F401 - the fixture: skips or fails as the real-model tests do

pytestmark = pytest.mark.real
pytest.importorskip("reasoning_gym")

SUM = ["--option", "min_terms=2", "--option", "max_terms=2", "--option", "max_digits=1"]


@pytest.fixture(scope="module")
def setting(model_dir, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("rg")
    for split, task, options, seed in [("in_domain", "chain_sum", SUM, 9), ("harder", "chain_sum", SUM[:2] + [
            "--option", "max_terms=3", "--option", "min_terms=3", "--option", "max_digits=1"], 9),
            ("other_skills", "products", SUM, 9)]:
        assert main(["data", f"rg:{task}", "--size", "4", "--seed", str(seed), *options,
                     "--out", str(d / f"{split}.jsonl")]) == 0
    assert main(["data", "rg:chain_sum", "--size", "16", "--seed", "0", *SUM, "--exclude", str(d / "in_domain.jsonl"),
                 "--out", str(d / "train.jsonl"), "--experts", str(d / "experts.jsonl")]) == 0
    evals = ",".join(str(d / f"{s}.jsonl") for s in ("in_domain", "harder", "other_skills"))
    return [f"init={model_dir}", f"prompts_file={d / 'train.jsonl'}", f"experts_file={d / 'experts.jsonl'}",
            f"eval_file={evals}", "prompts_per_step=2", "group_size=2", "experts_per_step=2",
            "sampler.max_new_tokens=12", "lr=3e-5"]


def test_probe_prints_the_real_criteria_table(setting, tmp_path, capsys):
    sets = [a for s in setting for a in ("--set", s)]
    code = load_script("probe").main(["--quick", "--out", str(tmp_path / "probe"), *sets, "--device", "cpu"])
    assert code in (0, 1)
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    names = [c["name"] for c in saved["criteria"]]
    assert names[:5] == ["headroom: base in-domain", "RL signal: GRPO final - base in-domain",
                         "the expert's procedure: SFT best harder - base harder",
                         "how on-policy the traces are: median expert-token p",
                         "retention: other-skill base -> GRPO / SFT final"]
    assert names[5:] == ["reward: in_domain", "reward: harder", "reward: other_skills"]
    assert all("4 completions correct: reward" in c["measured"] for c in saved["criteria"][5:])
    assert set(saved["base"]) == {"in_domain", "harder", "other_skills"} and 0 < saved["median_p"] < 1
    assert code == (0 if all(c["passed"] for c in saved["criteria"]) else 1)
    assert "| 3 | the expert's procedure" in capsys.readouterr().out


def test_demo_on_the_real_model_prints_before_and_after(setting, tmp_path, capsys):
    sets = [a for s in setting for a in ("--set", s)]
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2", *sets, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "CHORD-phi on your model and data" in printed and "(rg: rows: reasoning-gym's score_answer)" in printed
    for split in ("in_domain", "harder", "other_skills"):
        assert any(line.startswith(split) for line in printed.splitlines())
    assert printed.count("  base    : ") == 3 and printed.count("  trained : ") == 3


def test_comparison_on_the_real_model_writes_its_table(setting, tmp_path):
    sets = [a for s in setting for a in ("--set", s)]
    out = tmp_path / "compare"
    assert main(["reproduce", "--out", str(out), "--seeds", "2", "--steps", "2", "--sft-curve-steps", "0",
                 "--methods", "sft", "chord-phi", *sets, "--set", "eval_every=2", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"base", "sft", "chord-phi"} and [r["seed"] for r in results["chord-phi"]] == [0, 1]
    assert all(0 <= r["harder"] <= 1 and 0 <= r["other_skills"] <= 1 for r in results["sft"])
    assert "| chord-phi |" in (out / "results.md").read_text()
