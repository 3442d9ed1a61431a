"""`minichord check rank0 rank1 ...`: one data-parallel step's rank files are checked as one global batch (each
rank's loss and gradient with the whole batch's normalisers, averaged or summed over ranks); bad sets of rank files
are refused in one line."""

import pytest
import torch

from minichord.check import check_batch
from minichord.check.dump import DumpError, load_dumps
from minichord.cli import main
from test_check import FOUR_STEPS, IMPLEMENTATIONS, _write, batch, user_advantages, user_loss

RANK = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])  # sequence -> rank


def rank_files(tmp_path, impl, *, steps=(0, 0, 1, 1, 0, 1, 1, 0), mu=0.2, reduce="mean", numbering="alike",
               meta=None):
    """One file per rank: its sequences, its share of the global loss (x W under "mean") and gradient. steps: each
    sequence's accumulation step on its rank; the global batch's micro-batches are the (rank, step) cells."""
    b, steps = batch(), torch.tensor(steps)
    G = int(steps.max()) + 1
    cells = RANK * G + steps
    impl = dict(impl)
    adv = user_advantages(b["rewards"], b["group_ids"], b["is_expert"], **impl.pop("adv_kw", {}))
    W, paths = 2, []
    for r in range(W):
        rows = RANK == r
        loss, grad = user_loss(b["logp"], b["old_logp"], adv, b["mask"], b["is_expert"], cells, mu, only=rows,
                               ranks=W, dtype=torch.float64, **impl)
        scale = W if reduce == "mean" else 1
        ids = steps if numbering == "alike" else cells
        tensors = {k: b[k][rows] for k in ("logp", "old_logp", "mask", "is_expert", "rewards", "group_ids")}
        tensors.update(advantages=adv[rows], micro_batch=ids[rows], loss=loss * scale, grad_logp=grad[rows] * scale)
        m = {"mu": mu, "weighting": "phi", "rank": r, "step": 7, "grad_reduce": reduce, **(meta or {}).get(r, {})}
        paths.append(_write(tmp_path, f"rank{r}.safetensors", tensors, m))
    return paths


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_a_correct_data_parallel_step_matches(tmp_path, reduce, capsys):
    for convention in ("paper", "official", "ms-swift", "verl-seq-mean-token-sum"):
        paths = rank_files(tmp_path, IMPLEMENTATIONS[convention], reduce=reduce)
        assert main(["check", *paths, "--convention", convention]) == 0, capsys.readouterr().out
        assert capsys.readouterr().out.startswith("match")
    merged = load_dumps(paths[::-1])  # file order does not matter: rank order does
    assert merged.world == 2 and merged.steps()[1] == 2 and merged.micro_batch.tolist() == [0, 1, 0, 1, 2, 3, 3, 2]


@pytest.mark.parametrize("impl,steps,cause", [
    (dict(agg="micro-equal"), (0, 0, 1, 1, 0, 1, 1, 0), "per_device_normaliser"),
    (dict(agg="micro"), (0, 0, 1, 1, 0, 1, 1, 0), "micro_batch_sample_share"),
    (dict(keep="ends"), (0, 0, 1, 1, 2, 2, 1, 0), "middle_micro_batches_dropped"),
    (dict(bug="twice"), (0, 0, 1, 1, 0, 1, 1, 0), "accumulation_divided_twice"),
])
def test_a_bug_of_a_data_parallel_step_is_named(tmp_path, impl, steps, cause):
    result = check_batch(rank_files(tmp_path, impl, steps=steps), "paper")
    assert result.causes == [cause], result.report()


def test_the_per_device_normaliser_changes_with_the_number_of_ranks(tmp_path):
    """TRL PR #3231's point: the same batch split over 1 or 2 ranks gives two different losses."""
    one = check_batch(rank_files(tmp_path, dict(agg="micro-equal"), steps=[0] * 8), "paper")  # 1 step per rank
    b = batch()
    adv = user_advantages(b["rewards"], b["group_ids"], b["is_expert"])
    single, _ = user_loss(b["logp"], b["old_logp"], adv, b["mask"], b["is_expert"], None, 0.2, agg="micro-equal",
                          dtype=torch.float64)
    named = [c.key for dg in one.diagnoses for c in dg.causes]  # equal sequence counts per rank: = sample share
    assert "per_device_normaliser" in named and abs(one.loss_theirs - single.item()) > 1e-3, one.report()


def bad_sets(tmp_path):
    impl = IMPLEMENTATIONS["paper"]
    yield rank_files(tmp_path, impl, meta={1: {"mu": 0.3}}), "metadata mu=0.3, but"
    yield rank_files(tmp_path, impl, meta={1: {"convention": "official"}}), "metadata convention='official', but"
    yield rank_files(tmp_path, impl, meta={1: {"step": 8}}), "metadata step='8', but"
    yield rank_files(tmp_path, impl, meta={1: {"rank": 0}}), "rank 0 is given twice"
    yield rank_files(tmp_path, impl, meta={1: {"rank": 2}}), "rank 1 missing"
    yield rank_files(tmp_path, impl, meta={0: {"grad_reduce": "avg"}}), "grad_reduce='avg': must be one of mean, sum"
    yield rank_files(tmp_path, impl, meta={1: {"rank": 1.5}}), "metadata rank='1.5': must be an integer >= 0"
    yield rank_files(tmp_path, impl, steps=(0, 0, 1, 1, 0, 2, 1, 2)), "ids [0, 1, 2], but rank 0 has [0, 1]: every"
    yield rank_files(tmp_path, impl, steps=(0, 0, 2, 2, 0, 0, 2, 2)), "micro_batch id 1 missing"
    yield rank_files(tmp_path, impl, numbering="distinct"), "ids [2, 3], but rank 0 has [0, 1]"  # one id per step


def test_bad_sets_of_rank_files_are_one_line(tmp_path, capsys):
    for case, (paths, message) in enumerate(bad_sets(tmp_path)):
        assert main(["check", *paths]) == 2, case
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (case, err)
    no_step = rank_files(tmp_path, IMPLEMENTATIONS["paper"], meta={0: {}})
    with pytest.raises(DumpError, match="is given twice"):
        load_dumps([no_step[0], no_step[0]])
