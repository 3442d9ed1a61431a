"""Training on one GPU, checked on a CPU: the Triton kernels are wired into training, gradient
accumulation equals one large batch, bf16 autocast trains, and the device options fail clearly."""

import json
import math
import random
from pathlib import Path

import pytest
import torch

from minichord import batch as batches
from minichord import cli, losses
from minichord.config import ConfigError, TrainConfig
from minichord.device import resolve_device
from minichord.methods import METHODS
from minichord.tasks import style_texts
from minichord.tokenizer import Tokenizer
from test_trainer import make_trainer, read_metrics, tiny_data


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def test_triton_kernels_train_like_the_torch_path(tok, tmp_path, monkeypatch):
    """3 CHORD-phi steps with MINICHORD_KERNELS=triton (interpreted on CPU) end with the torch path's weights:
    the fused loss kernel and the log-prob kernel are on the training path (ppo_epochs=2 recomputes old
    log-probs through kernels/logprobs.py)."""
    models, lines = {}, {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("MINICHORD_KERNELS", backend)
        lines[backend] = []
        t = make_trainer(tok, tmp_path / backend, "chord-phi", ["steps=3", "lr=3e-3", "ppo_epochs=2",
                                                                            "prompts_per_step=2", "experts_per_step=2"],
                         log=lines[backend].append)
        t.run()
        models[backend] = t.model
        initial = make_trainer(tok, tmp_path / "init", "chord-phi", []).model  # same seed, no step
        assert all(row["backend"] == backend for row in read_metrics(tmp_path / backend))
    assert lines["triton"][0].startswith("loss backend: triton fused (kernels/fused_loss.py)")
    assert lines["torch"][0].startswith("loss backend: torch chunked")
    drop = ("time_sample", "time_score", "time_train", "backend")
    assert [r["reward"] for r in read_metrics(tmp_path / "torch", drop)] == \
        [r["reward"] for r in read_metrics(tmp_path / "triton", drop)], "the runs sampled different rollouts"
    # all weights as one vector: a parameter whose true gradient is 0 (k_proj's bias: q.b is the same for every
    # key) gets rounding noise, which AdamW scales up to lr-sized steps on either path
    weights = {k: torch.cat([p.detach().flatten() for p in m.parameters()]) for k, m in models.items()}
    err = relative_error(weights["triton"], weights["torch"])
    moved = relative_error(weights["torch"], torch.cat([p.detach().flatten() for p in initial.parameters()]))
    assert err <= 1e-5 and moved > 1e3 * err, f"relative weight difference {err:.2e} after 3 steps (moved {moved:.2e})"


def coin(response: str, answer: str) -> float:
    """A reward that differs between the rollouts of a group (so that GRPO has a gradient at step 0)."""
    return float(sum(map(ord, response)) % 2)


def _stage_batches(tok, tmp_path):
    """(method/stage name, stage, mu, float64 trainer, packed batch of its step 0) for every method preset."""
    for name in METHODS:
        t = make_trainer(tok, tmp_path / name, name, ["steps=2", "prompts_per_step=2"], data=tiny_data(reward=coin))
        t.model.double()
        for stage in t.stages:
            batch, _, mu, _ = t._batch(stage, stage.start)  # mu: None for LUFFY
            yield f"{name}/{stage.method.name}", stage, mu, t, batch


def test_micro_batches_give_the_full_batch_loss_and_gradients(tok, tmp_path):
    """1, 2 and 4 micro-batches: the same loss and gradients (float64, 1e-10 relative) for every method
    preset: the coefficients are computed over the whole batch, never per micro-batch."""
    for name, stage, mu, t, batch in _stage_batches(tok, tmp_path):
        coef = losses.coefficients(batch.is_expert, batch.rows, None, mu, stage.cfg.loss, dtype=torch.float64)  # [N]
        n_seqs = batch.ids.shape[0]
        results = []
        for micro in (0, math.ceil(n_seqs / 2), math.ceil(n_seqs / 4)):
            assert len(batches.micro_batches(batch, micro)) == (1 if micro == 0 else math.ceil(n_seqs / micro))
            t.model.zero_grad(set_to_none=True)
            out = batches.backward_loss(t.model, batch, coef, stage.cfg.loss, 1.0, micro)
            grads = torch.cat([p.grad.flatten() for p in t.model.parameters()])
            logp = batches.batch_logprobs(t.model, batch, 1.0, micro)  # [N], the old/ref log-prob path
            results.append((micro, out, grads, logp))
        _, full, full_grads, full_logp = results[0]
        assert full_grads.abs().max() > 0, f"{name}: no gradient, a weak test"
        assert full_logp.dtype == torch.float64 and relative_error(full.logp, full_logp) <= 1e-10
        for micro, out, grads, logp in results[1:]:
            tag = f"{name}, {micro} sequences per micro-batch of {n_seqs}"
            # GRPO's loss is ~ -mean(A) ~ 0 (a cancelling sum): relative to a bound of sum_t |coef_t l_t|
            scale = coef.abs().sum() * (1 + batch.advantages.abs().max() + full.logp.abs().max())
            assert abs(out.loss.item() - full.loss.item()) <= 1e-10 * scale.item(), f"{tag}: loss"
            assert relative_error(grads, full_grads) <= 1e-10, f"{tag}: gradients differ"
            for field in ("logp", "entropy"):
                assert relative_error(getattr(out, field), getattr(full, field)) <= 1e-10, f"{tag}: {field}"
            assert torch.equal(out.clipped, full.clipped) and relative_error(logp, full_logp) <= 1e-10, tag


def test_activation_checkpointing_gives_the_same_gradients(tok, tmp_path):
    name, stage, mu, t, batch = next(_stage_batches(tok, tmp_path))
    coef = losses.token_coefficients(batch.is_expert, mu, dtype=torch.float64)
    grads = []
    for checkpointing in (False, True):
        t.model.activation_checkpointing = checkpointing
        t.model.zero_grad(set_to_none=True)
        batches.backward_loss(t.model, batch, coef, stage.cfg.loss, 1.0, micro_batch_seqs=3)
        grads.append(torch.cat([p.grad.flatten() for p in t.model.parameters()]))
    assert relative_error(grads[1], grads[0]) <= 1e-12


def test_bf16_autocast_learns_like_fp32(tok, tmp_path):
    """The GRPO setting of test_trainer.test_grpo_raises_reward, in fp32 and in bf16 autocast: the reward rises
    in both, by a comparable amount (first 3 vs last 3 steps; each run's numbers are in the message)."""
    gains, curves = {}, {}
    for dtype in ("fp32", "bf16"):
        t = make_trainer(tok, tmp_path / dtype, "grpo", ["steps=12", "lr=2e-2", "prompts_per_step=8", "group_size=8",
                                                         "save_every=1000", "sampler.max_new_tokens=2", f"dtype={dtype}"])
        t.run()
        curves[dtype] = [round(m["reward"], 3) for m in read_metrics(tmp_path / dtype)]
        gains[dtype] = sum(curves[dtype][-3:]) / 3 - sum(curves[dtype][:3]) / 3
        assert all(p.dtype == torch.float32 for p in t.model.parameters()), "bf16 keeps fp32 master weights"
    print(f"reward curves {json.dumps(curves)}")
    assert gains["fp32"] > 0.3 and gains["bf16"] > 0.3 and gains["bf16"] > 0.5 * gains["fp32"], \
        f"reward gain fp32 {gains['fp32']:.3f} vs bf16 {gains['bf16']:.3f}; curves {json.dumps(curves)}"


FIXTURES = Path(__file__).parent / "fixtures"


def test_device_and_dtype_options_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="device='gpu': must be one of auto, cpu, cuda"):
        TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match="dtype='fp16': must be one of fp32, bf16"):
        TrainConfig(dtype="fp16")
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    for argv in (["train", "--method", "grpo", "--out", str(tmp_path / "run")], ["pretrain", "--out", str(tmp_path / "b")],
                 ["eval", "--model", str(FIXTURES / "hf" / "qwen2"), "--prompts", str(FIXTURES / "gsm8k" / "test.jsonl")],
                 ["chat", "--model", str(FIXTURES / "hf" / "qwen2"), "hi"], ["demo", "--out", str(tmp_path / "demo")],
                 ["reproduce", "--quick", "--out", str(tmp_path / "rep")]):
        assert cli.main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"minichord {argv[0]}: error: device='cuda': CUDA is not available" in err, err
    assert not any(tmp_path.iterdir()), "nothing may be written before the device is refused"
