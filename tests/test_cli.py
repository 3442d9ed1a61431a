"""The command line: help, clear errors, and a cut-down `reproduce --quick` end to end."""

import json
import subprocess
import sys

import pytest

from minichord.cli import main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "minichord.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "pretrain", "train", "eval", "reproduce", "plot", "samples", "check", "data"):
        assert cmd in out.stdout


def test_unknown_override_is_a_clear_error(tiny_ckpt, tmp_path, capsys):
    code = main(["train", "--method", "grpo", "--out", str(tmp_path), "--set", f"init={tiny_ckpt}",
                 "--set", "prompts_per_stp=4"])
    assert code == 2
    assert "did you mean 'prompts_per_step'" in capsys.readouterr().err


def test_missing_checkpoint_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's one-line usage error
        main(["eval", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_reproduce_quick_writes_table_json_and_plots(tiny_ckpt, tmp_path):
    out = tmp_path / "repro"
    code = main(["reproduce", "--quick", "--methods", "grpo", "chord-phi", "--steps", "2", "--seeds", "1",
                 "--sft-curve-steps", "2", "--out", str(out), "--set", f"init={tiny_ckpt}", "--set", "n_test=6",
                 "--set", "prompts_per_step=2", "--set", "group_size=2", "--set", "experts_per_step=2",
                 "--set", "sampler.max_new_tokens=8"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"base", "grpo", "chord-phi"}
    for method in ("grpo", "chord-phi"):
        (run,) = results["results"][method]
        assert 0.0 <= run["in_domain"] <= 1.0 and run["wall_s"] > 0
    table = (out / "results.md").read_text()
    for method in ("base", "grpo", "chord-phi"):
        assert f"| {method} |" in table
    assert (out / "curves.png").stat().st_size > 0 and (out / "sft_curve.png").stat().st_size > 0
    assert main(["plot", str(out / "grpo" / "seed0"), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_plot_keeps_each_runs_colour_in_every_panel(tmp_path, monkeypatch):
    """A run missing a curve (SFT has no rollout reward) must not shift the others' colours."""
    import matplotlib.axes  # the `plot` extra, installed by `make test`
    from minichord.runners import plot_runs

    for name, has_reward in (("sft", False), ("grpo", True)):
        (tmp_path / name).mkdir()
        rows = [{"step": s, "mu": 0.5, **({"reward": 0.1 * s} if has_reward else {})} for s in range(3)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: seen.append((k["label"], k["color"])) or real_plot(self, *a, **k))
    plot_runs([tmp_path / "sft", tmp_path / "grpo"], tmp_path / "p.png")
    assert ("grpo", "C1") in seen and ("sft", "C0") in seen
    assert len(set(seen)) == 2  # one colour per run, whatever the panel


def test_eval_of_a_toy_checkpoint_on_a_prompts_file_keeps_the_exact_reward(tiny_ckpt, tmp_path, capsys):
    """reward=auto is math only for a model with a chat template: the toy's terse answers are not in math's format."""
    from minichord.data import rewards

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "add 1 2", "answer": "3"}\n')
    assert main(["eval", str(tiny_ckpt), "--prompts", str(prompts), "--max-new-tokens", "4"]) == 0
    assert "lenient" not in capsys.readouterr().out
    assert main(["eval", str(tiny_ckpt), "--prompts", str(prompts), "--max-new-tokens", "4", "--reward", "math"]) == 0
    assert "lenient" in capsys.readouterr().out
    assert rewards("auto", chat_model=False)[1] is None and rewards("auto", chat_model=True)[1] is not None
