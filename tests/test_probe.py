"""`scripts/probe.py --quick`: the criteria table is produced and well formed (not that the criteria pass)."""

import json

import pytest

from conftest import load_script

probe = load_script("probe")
overfit_check = probe.overfit_check


def test_quick_probe_prints_a_pass_fail_table(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "probe"
    code = probe.main(["--quick", "--out", str(out), "--set", f"init={tiny_ckpt}",
                 "--set", "sampler.max_new_tokens=8", "--set", "prompts_per_step=2", "--set", "group_size=2",
                 "--set", "experts_per_step=2", "--device", "cpu"])
    assert code in (0, 1)  # 1: a criterion fails (a random model fails most)
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(row.rstrip(" |").endswith(("pass", "FAIL")) for row in rows)
    saved = json.loads((out / "probe.json").read_text())
    assert [c["number"] for c in saved["criteria"]] == [1, 2, 3, 4, 5, 6]
    assert (out / "probe.md").read_text().count("\n| ") == 7  # header + 6 rows
    assert code == (0 if all(c["passed"] for c in saved["criteria"]) else 1)
    # criterion 2 on a large expert set, criterion 6 on a small one: two SFT runs
    assert (out / "sft-long" / "eval.jsonl").exists() and (out / "sft-small" / "eval.jsonl").exists()
    assert "16 demos" in printed and "8 demonstrations" in printed


def test_overfit_check_reads_a_curve():
    ok, text = overfit_check([0, 10, 20, 30, 40], [0.3, 0.0, 0.8, 0.7, 0.6], list(range(41)),
                             [3.0 - 0.07 * s for s in range(41)])
    assert ok and "peak 0.800 at step 20" in text
    shift_only, _ = overfit_check([0, 10, 20], [0.5, 0.0, 0.01], list(range(21)), [2.0 - 0.05 * s for s in range(21)])
    assert not shift_only  # the fall from the base at step 0 is the style shift, not overfitting
    flat, _ = overfit_check([0, 10, 20], [0.1, 0.5, 0.8], list(range(21)), [2.0 - 0.05 * s for s in range(21)])
    assert not flat  # still rising: no overfit


def test_bad_arguments_are_one_line(tmp_path, capsys):
    for value, message in [("nan", "--sft-lr: 'nan': must be a number > 0"), ("-1", "--sft-lr: '-1': must be")]:
        with pytest.raises(SystemExit) as exit_:
            probe.main(["--out", str(tmp_path / "r"), "--sft-lr", value])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and message in err[-1] and "Traceback" not in "\n".join(err)
    assert probe.main(["--out", str(tmp_path / "r"), "--set", "steps=0"]) == 2
    assert capsys.readouterr().err.strip() == "probe: error: TrainConfig: steps=0: must be an integer >= 1"
    assert not (tmp_path / "r").exists()
