"""Data parallelism is exact: one process, 2 ranks and 2 ranks x 2 micro-batches give the same loss, gradients and
weights for every method preset (gloo on the CPU; ranks are spawned processes), resume works across a change of
the number of ranks, and a stopped or dead rank loses nothing (torchrun, `python -m minichord.cli train`)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from minichord.checkpoint import load_checkpoint
from minichord.config import ModelConfig
from minichord.distributed import Ranks, gathered
from minichord.methods import METHODS, build_stages
from minichord.model import Transformer
from minichord.tasks import style_texts
from minichord.tokenizer import Tokenizer
from minichord.trainer import Trainer, TrainingInterrupted, prepare_run
from test_trainer import TINY, tiny_data, tok  # noqa: F401  (tok is a fixture)

# (name, method, overrides, dtype, steps); every preset, plus mini-batches, micro-batches and the official convention
CASES = [(m, m, [], torch.float64, 1) for m in METHODS] + [
    ("chord-phi-minibatches", "chord-phi", ["ppo_epochs=2", "minibatches=2"], torch.float64, 1),
    ("chord-phi-official", "chord-phi", ["convention=official", "micro_batch_seqs=3"], torch.float64, 1),
    ("luffy-minibatches", "luffy", ["minibatches=2"], torch.float64, 1),
    *((f"{m}-fsdp", m, ["fsdp=true"], torch.float64, 1) for m in ("chord-phi", "luffy", "sft-grpo")),
    ("chord-phi-official-fsdp", "chord-phi", ["convention=official", "micro_batch_seqs=3", "fsdp=true"],
     torch.float64, 1),
    ("chord-mu-fsdp-fp32-3-steps", "chord-mu", ["fsdp=true"], torch.float32, 3),
    *((f"{m}-fp32-3-steps", m, [], torch.float32, 3) for m in METHODS)]


def run_case(tok, out, method, overrides, dtype, steps, ranks: Ranks, micro: int = 0) -> dict:  # noqa: F811
    """`steps` train steps; {"loss/k": [1], grads and weights}: what a rank holds after them (the same on all)."""
    micro_set = [f"micro_batch_seqs={micro}"] if micro and not any("micro_batch" in o for o in overrides) else []
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=64)).to(dtype)
    stages = build_stages(method, overrides=[*TINY, *overrides, *micro_set])  # each preset's own lr
    trainer = Trainer(stages, model, tok, tiny_data(), out, log=lambda line: None, ranks=ranks)
    losses = [trainer.train_step(s)["loss"] for s in range(steps)]
    grads = {k: gathered(p.grad) for k, p in trainer.trained.named_parameters() if p.grad is not None}  # FSDP: gathered
    return {**{f"loss/{k}": torch.tensor([v], dtype=torch.float64) for k, v in enumerate(losses)},
            **{f"grad/{k}": g.detach().clone() for k, g in grads.items()},
            **{f"weight/{k}": p.detach().clone() for k, p in trainer.model.named_parameters()}}


def _rank_main(rank: int, world: int, init_file: str, out: str, micro: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    tokenizer = Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)
    for name, method, overrides, dtype, steps in CASES:
        result = run_case(tokenizer, f"{out}/{name}-rank{rank}", method, overrides, dtype, steps,
                          Ranks(rank, world), micro)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in result.items()}, f"{out}/{name}-micro{micro}.safetensors")
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[0, 2], ids=["2-ranks", "2-ranks-x-2-micro-batches"])
def two_ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ranks-micro{request.param}")
    mp.spawn(_rank_main, args=(2, str(out / "pg"), str(out), request.param), nprocs=2, join=True)
    return out, request.param


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_equal_one_process(case, two_ranks, tok, tmp_path):  # noqa: F811
    name, method, overrides, dtype, steps = case
    out, micro = two_ranks
    ranks_result = load_file(str(out / f"{name}-micro{micro}.safetensors"))
    one = run_case(tok, tmp_path, method, overrides, dtype, steps, Ranks())
    assert ranks_result.keys() == one.keys()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for key, value in one.items():
        diff = (ranks_result[key].double() - value.double()).abs().max().item()
        assert diff <= tol, f"{name}: {key} differs by {diff:.3g} (> {tol}) between 1 process and 2 ranks"


def test_a_rank_share_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match=r"prompts_per_step=3 cannot be split over 2 ranks"):
        Ranks(0, 2).share(3, "prompts_per_step")
    assert list(Ranks(1, 2).share(4, "x")) == [2, 3] and list(Ranks().share(3, "x")) == [0, 1, 2]


# ---- the command line under torchrun: a real launch of 2 ranks ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETTINGS = ["n_test=4", "eval_every=100000", "sampler.max_new_tokens=6", "prompts_per_step=2", "group_size=2",
            "experts_per_step=2", "device=cpu"]


def torchrun(tiny_ckpt, out, *settings: str, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), "-m", "minichord.cli", "train", "--method", "chord-phi", "--out", str(out)]
    for setting in (f"init={tiny_ckpt}", *SETTINGS, *settings):
        cmd += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def wait_for_steps(proc, out, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < n:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def minichord_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("minichord train: ")]


def test_two_ranks_then_a_one_process_resume_equal_one_process_throughout(tiny_ckpt, tmp_path):
    proc = torchrun(tiny_ckpt, tmp_path / "run", "steps=2", "save_every=1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.count("run directory:") == 1 and len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint").step == 2
    settings = [f"init={tiny_ckpt}", *SETTINGS, "steps=3"]
    prepare_run("chord-phi", tmp_path / "run", overrides=settings, log=lambda line: None).run()  # resumes at 2
    prepare_run("chord-phi", tmp_path / "one", overrides=settings, log=lambda line: None).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["rollouts"] == 4
    resumed, one = (load_checkpoint(tmp_path / d / "checkpoint").model.state_dict() for d in ("run", "one"))
    assert max((resumed[k] - one[k]).abs().max().item() for k in one) <= 1e-5


def test_fsdp_ranks_resume_exactly(tiny_ckpt, tmp_path):
    """2 FSDP2 ranks train 2 steps and save (shards gathered), then resume to 3 (the full state cut into shards):
    weights and AdamW moments equal an uninterrupted 3-step FSDP2 run's."""
    for run, steps in (("cut", 2), ("cut", 3), ("whole", 3)):
        proc = torchrun(tiny_ckpt, tmp_path / run, f"steps={steps}", "save_every=1", "fsdp=true")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    cut, whole = (load_checkpoint(tmp_path / d / "checkpoint") for d in ("cut", "whole"))
    assert cut.step == whole.step == 3
    pairs = [(cut.model.state_dict()[k], v) for k, v in whole.model.state_dict().items()] + [
        (cut.optimizer_state["state"][i][k], v) for i, s in whole.optimizer_state["state"].items()
        for k, v in s.items() if torch.is_tensor(v)]
    assert max((a.double() - b.double()).abs().max().item() for a, b in pairs) == 0.0


def _as_torchrun_rank(rank: int, port: int) -> None:  # the environment torchrun gives rank `rank` of 2
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _refuse_main(rank: int, port: int, out: str, tiny_ckpt: str) -> None:
    _as_torchrun_rank(rank, port)
    try:
        prepare_run("chord-phi", out, overrides=[f"init={tiny_ckpt}", *SETTINGS, f"seed={rank}"], log=print)
    except ValueError as e:
        Path(f"{out}-rank{rank}.txt").write_text(str(e))  # what this rank was told
    dist.destroy_process_group()


def test_ranks_given_different_settings_are_refused(tiny_ckpt, tmp_path):
    mp.spawn(_refuse_main, args=(_free_port(), str(tmp_path / "run"), str(tiny_ckpt)), nprocs=2, join=True)
    assert (tmp_path / "run-rank0.txt").read_text() == ("rank 1's seed=1 differs from rank 0's 0: every rank "
                                                        "must run the same command")
    assert "rank 0's" in (tmp_path / "run-rank1.txt").read_text()


def _late_stop_main(rank: int, port: int, out: str, tiny_ckpt: str) -> None:
    _as_torchrun_rank(rank, port)
    trainer = prepare_run("chord-phi", out, overrides=[f"init={tiny_ckpt}", *SETTINGS, "steps=6", "save_every=1"],
                          log=lambda _line: None)
    save = trainer.save

    def save_then_signal() -> None:  # a signal on rank 1 alone, after step 2's vote
        save()
        if rank == 1 and trainer.step == 2:
            trainer.request_stop("SIGTERM")

    trainer.save = save_then_signal
    try:
        trainer.run()
    except TrainingInterrupted as e:
        Path(f"{out}-rank{rank}.txt").write_text(str(e))  # what this rank was told
    dist.destroy_process_group()


def test_a_signal_on_one_rank_after_the_vote_stops_every_rank_at_the_next_step(tiny_ckpt, tmp_path):
    mp.spawn(_late_stop_main, args=(_free_port(), str(tmp_path / "run"), str(tiny_ckpt)), nprocs=2, join=True)
    assert "stopped by SIGTERM after step 3/6" in (tmp_path / "run-rank1.txt").read_text()
    assert "stopped by a stop on another rank after step 3/6" in (tmp_path / "run-rank0.txt").read_text()
    assert load_checkpoint(tmp_path / "run" / "checkpoint").step == 3


def test_sigterm_to_the_launcher_stops_every_rank_with_one_checkpoint(tiny_ckpt, tmp_path):
    proc = torchrun(tiny_ckpt, tmp_path / "run", "steps=100000", "save_every=100000")
    wait_for_steps(proc, tmp_path / "run", 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = minichord_lines(err)
    assert lines and all("stopped by" in line for line in lines) and "Traceback" not in "\n".join(lines), err
    step = load_checkpoint(tmp_path / "run" / "checkpoint").step
    assert step >= 2 and len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == step


def test_a_dead_rank_ends_the_others_with_one_line_and_the_checkpoint_loads(tiny_ckpt, tmp_path):
    proc = torchrun(tiny_ckpt, tmp_path / "run", "steps=100000", "save_every=1")
    wait_for_steps(proc, tmp_path / "run", 2)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60
    lines = minichord_lines(err)  # rank 0's line; torchrun then prints its own report of the failed ranks
    assert len(lines) == 1 and "rank 0: lost another rank" in lines[0] and "[rank0]: Traceback" not in err, err
    assert load_checkpoint(tmp_path / "run" / "checkpoint").step >= 1


@pytest.mark.parametrize("settings, words", [
    (["prompts_per_step=1"], "prompts_per_step=1 cannot be split over 2 ranks"),
    (["experts_per_step=3"], "experts_per_step=3 cannot be split over 2 ranks"),
    (["dist_backend=nccl"], "dist_backend=nccl needs CUDA"),
])
def test_bad_launches_are_one_line(tiny_ckpt, tmp_path, settings, words):
    proc = torchrun(tiny_ckpt, tmp_path / "run", "steps=2", *settings)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = minichord_lines(err)
    assert lines and all(words in line for line in lines), err
    assert not (tmp_path / "run" / "checkpoint").exists()
