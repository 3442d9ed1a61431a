# %% [markdown]
# # 08 — Running on one GPU
#
# Everything so far ran on a laptop CPU. What changes on one GPU, and how a 0.5B-1.5B model fits
# on one 80 GB card. This file runs anywhere: on a CPU it runs the same small checks on the CPU.
#
#     minichord train --method chord-phi --out runs/gpu --device cuda --dtype bf16 \
#         --set micro_batch_seqs=16 --set activation_checkpointing=true
#
# What changes:
#
# 1. **Device.** `device = auto | cpu | cuda` (TrainConfig, and `--device` on every command that
#    runs a model): the model, the KV cache, the sampler's generators, the token batches and the
#    evaluation live there (`minichord/device.py`). `--device cuda` without CUDA is a one-line error.
# 2. **Kernels.** `minichord.lm_head.kernel_backend` is the one switch: the two hot ops (token log-probs
#    for old / reference log-probs, fused lm-head + CHORD loss for training) run the Triton kernels
#    on CUDA and torch code elsewhere; `MINICHORD_KERNELS=triton|torch|auto` forces one (e.g. `torch`
#    to rule out a kernel bug). A run's first line says which, and metrics.jsonl has a "backend" field.
# 3. **Precision.** `dtype = bf16` is autocast over fp32 master weights: matmuls and attention in bf16,
#    weights, gradients, AdamW state, norms and the loss math in fp32.
# 4. **Size.** Micro-batches with gradient accumulation (`micro_batch_seqs`) and activation
#    checkpointing (`activation_checkpointing`) bound the activations; the fused loss never holds
#    the [N, V] logits.

# %%
import dataclasses
import importlib.util
import os

import torch

from minichord import lm_head
from minichord.config import ModelConfig, SamplerConfig, TrainConfig
from minichord.device import describe, resolve_device
from minichord.config import LossConfig
from minichord.losses import token_coefficients
from minichord.model import Transformer
from minichord.sampler import generate

device = resolve_device("auto")  # minichord/device.py: cuda if available, else cpu
print(f"torch {torch.__version__}; device: {device}"
      + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else " (no CUDA: CPU fallback)"))
torch.manual_seed(0)

# %% [markdown]
# ## 1. Kernel dispatch

# %%
print(f"lm_head.kernel_backend() = {lm_head.kernel_backend()!r} with MINICHORD_KERNELS={os.environ.get('MINICHORD_KERNELS', '')!r}")
saved = os.environ.get("MINICHORD_KERNELS")
os.environ["MINICHORD_KERNELS"] = "torch"
print(f"  with MINICHORD_KERNELS=torch -> {lm_head.kernel_backend()!r}")
if saved is None:
    del os.environ["MINICHORD_KERNELS"]
else:
    os.environ["MINICHORD_KERNELS"] = saved
# Unset, the rule is: Triton iff CUDA is available, and CPU tensors always take the torch path
# (so a CPU-side computation on a GPU machine never calls a GPU kernel). Forcing `triton` on a
# CPU-only machine runs the kernels under Triton's interpreter (TRITON_INTERPRET=1): slow,
# for tests only (tutorial 03).

# %% [markdown]
# ## 2. A forward, a sample and a loss on this device, fp32 vs bf16
#
# The model, the sampler and the ops take their device from their inputs (the sampler from the
# model's parameters): moving the model is all it takes. A random generator for sampling must
# live on the same device.

# %%
cfg = ModelConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=128)
model32 = Transformer(cfg).to(device).eval()
model16 = Transformer(cfg).to(device).eval()
model16.load_state_dict(model32.state_dict())
model16.to(torch.bfloat16)

ids = torch.randint(5, cfg.vocab_size, (4, 48), device=device)  # [B, T]
targets = ids[:, 1:].reshape(-1)  # [N]
with torch.no_grad():
    logits32 = model32(ids)[:, :-1].reshape(-1, cfg.vocab_size)  # [N, V] fp32
    logits16 = model16(ids)[:, :-1].reshape(-1, cfg.vocab_size)  # [N, V] bf16
logp32 = lm_head.token_logprobs(logits32, targets)  # dispatched: Triton on CUDA, torch on CPU
logp16 = lm_head.token_logprobs(logits16, targets)  # bf16 logits in, fp32 log-probs out
ref32 = lm_head.reference_token_logprobs(logits32, targets)
err_kernel = (logp32 - ref32).abs().max().item()
err_bf16 = (logp16 - logp32).abs().max().item()
print(f"lm_head.token_logprobs vs torch reference (fp32): max |diff| = {err_kernel:.1e} (tolerance 1e-4)")
print(f"bf16 model vs fp32 model, token log-probs:    max |diff| = {err_bf16:.1e} (tolerance 0.1; bf16 keeps ~3 digits)")
assert logp16.dtype == torch.float32
assert err_kernel < 1e-4 and err_bf16 < 0.1

gen = torch.Generator(device=device).manual_seed(0)
out = generate(model16, [[1, 3, 7, 8, 4], [1, 3, 9, 4]], SamplerConfig(max_new_tokens=16), eos_id=2, pad_id=0,
               generator=gen)
print(f"sampled on {out.tokens.device} with a bf16 model: tokens {tuple(out.tokens.shape)}, logprobs {out.logprobs.dtype}")

# the fused loss the trainer uses, on this device, with bf16 hidden states and lm-head
hidden = model16(ids, return_hidden=True)[:, :-1].reshape(-1, cfg.dim)  # [N, D] bf16
N = hidden.shape[0]
is_expert = torch.arange(N, device=device) >= N // 2  # second half: expert tokens
coef = token_coefficients(is_expert, 0.1)
adv = torch.where(is_expert, 0.0, torch.randn(N, device=device))
fused = lm_head.fused_token_loss(hidden, model16.lm_head_weight, targets, coef, is_expert, adv,
                             torch.where(is_expert, 0.0, logp16), LossConfig(expert_weighting="phi"))
fused.loss.backward()
grad = model16.embed_tokens.weight.grad
print(f"fused CHORD-phi loss {fused.loss.item():+.4f}; lm-head grad {grad.dtype}, finite: {bool(torch.isfinite(grad).all())}")
assert torch.isfinite(fused.loss) and torch.isfinite(grad).all()

# %% [markdown]
# ## 3. Sizing a bigger model: the memory arithmetic
#
# `ModelConfig` describes any Qwen2-family shape; built on the `meta` device it gives exact
# parameter counts without allocating anything. With bf16 autocast over fp32 master weights:
#
# * weights 4 B + gradients 4 B + AdamW's two moments 8 B = **16 bytes per parameter**
#   (the autocast bf16 copies of the matrices add 2 B/param while a forward runs);
# * activations kept for backward, per token and layer, roughly: bf16 outputs of the q/k/v/o,
#   gate/up/down projections and attention (~2 x (6 D + 3 F) bytes) plus the fp32 residual and norm
#   inputs (~4 x 3 D bytes): about 50 KB for the 0.5B shape, 90 KB for the 1.5B shape;
#   activation checkpointing keeps only each layer's fp32 input (4 D bytes) and recomputes one layer
#   at a time in backward;
# * KV cache per sampled token: 2 (k, v) x layers x kv_heads x head_dim x 2 bytes (bf16);
# * logits per token: vocab x 2 bytes in bf16: the fused loss holds one chunk of them at a time
#   (256 MB on CUDA), never the batch's [N, V].

# %%
configs = {
    "toy (default)": ModelConfig(),
    "Qwen2.5-0.5B shape": ModelConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                                      ffn_dim=4864, max_seq_len=32768, rope_theta=1e6),
    "Qwen2.5-1.5B shape": ModelConfig(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                                      ffn_dim=8960, max_seq_len=32768, rope_theta=1e6),
}
tokens = 16384  # tokens in one forward/backward (e.g. 64 rollouts x 256 tokens)
print(f"{'config':20s} {'params':>8s} {'weights+grads+Adam':>19s} {'activations':>12s} {'checkpointed':>12s} "
      f"{'KV/token':>9s}   (activations for {tokens} tokens)")
for name, c in configs.items():
    with torch.device("meta"):
        n_params = Transformer(c).num_params()
    act = tokens * c.n_layers * (2 * (6 * c.dim + 3 * c.ffn_dim) + 4 * 3 * c.dim)  # bytes, rough
    ckpt = tokens * c.n_layers * 4 * c.dim + tokens * (2 * (6 * c.dim + 3 * c.ffn_dim) + 4 * 3 * c.dim)
    kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2
    print(f"{name:20s} {n_params / 1e6:7.0f}M {n_params * 16 / 1e9:16.1f} GB {act / 1e9:9.1f} GB "
          f"{ckpt / 1e9:9.1f} GB {kv / 1e3:6.1f} KB")
# So on one 80 GB GPU: the 0.5B shape (16 B x 494M = 7.9 GB of state) trains 16k tokens at once even
# without checkpointing (~20 GB of activations); the 1.5B shape (16 B x 1.54B = 24.7 GB) needs
# checkpointing or micro-batches for that (~42 GB of activations without, ~4 GB with). Sampling the
# paper's 32 x 8 rollouts of 4096 tokens at once would need 1M tokens of KV cache: 12 GB (0.5B),
# 29 GB (1.5B). These are estimates; `bash benchmarks/gpu_check.sh` measures the peak on a real GPU.

# %% [markdown]
# ## 4. Batch sizes and the other knobs (TrainConfig)
#
# The official math setting is 32 prompts x 8 rollouts + 64 expert demonstrations per step,
# temperature 1.0, lr 1e-6 constant, grad clip 1.0. In minichord those are `--set` overrides:

# %%
official = dataclasses.replace(TrainConfig(), prompts_per_step=32, group_size=8, experts_per_step=64, lr=1e-6,
                               sampler=SamplerConfig(max_new_tokens=4096, temperature=1.0))
for field in ("prompts_per_step", "group_size", "experts_per_step", "lr", "grad_clip", "minibatches", "ppo_epochs"):
    print(f"  {field:18s} = {getattr(official, field)}")
print(f"  sampler.max_new_tokens = {official.sampler.max_new_tokens}, temperature = {official.sampler.temperature}")
print("  e.g.: minichord train --method chord-phi --out runs/big --set prompts_per_step=32 --set group_size=8 "
      "--set experts_per_step=64 --set lr=1e-6")
# `minibatches` splits one rollout batch into several *optimizer steps* (PPO-style). Gradient
# accumulation is `micro_batch_seqs`: each (mini-)batch's token coefficients, (1-mu)/N_on and
# mu/N_exp, are computed over the whole (mini-)batch first; each micro-batch's loss then uses its
# slice, so the micro-batch losses and gradients add up to exactly the full batch's, and one
# optimizer step follows (minichord/batch.py). Checked here on a tiny model in float64:

# %%
from minichord import batch as batches
from minichord.batch import Sequence, pack

tiny = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                               max_seq_len=32)).double()
g = torch.Generator().manual_seed(0)
seqs = [Sequence(torch.randint(3, 64, (4,), generator=g).tolist(), torch.randint(3, 64, (3 + i,), generator=g).tolist(),
                 is_expert=i % 3 == 0, advantage=float(i % 2) - 0.5, old_logprobs=None if i % 3 == 0 else [-4.0] * (3 + i))
        for i in range(6)]
batch = pack(seqs, pad_id=0, max_len=32)
coef = token_coefficients(batch.is_expert, 0.1, dtype=torch.float64)  # over the WHOLE batch
grads = []
for micro in (0, 3, 2):  # all 6 sequences at once, 2 micro-batches, 3 micro-batches
    tiny.zero_grad()
    out = batches.backward_loss(tiny, batch, coef, LossConfig(expert_weighting="phi"), 1.0, micro)
    grads.append(torch.cat([p.grad.flatten() for p in tiny.parameters()]))
    print(f"  micro_batch_seqs={micro}: loss {out.loss.item():+.12f}")
worst = max(((g_ - grads[0]).norm() / grads[0].norm()).item() for g_ in grads[1:])
print(f"  gradients vs one batch: max relative difference {worst:.1e}")
assert worst < 1e-10

# %% [markdown]
# ## 5. What is and is not supported yet
#
# Checked against the code, not promised: the lines below are computed when you run the file.

# %%
train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
has_device_option = {"device", "dtype", "micro_batch_seqs", "activation_checkpointing"} <= train_fields
has_hf_loader = importlib.util.find_spec("minichord.hf") is not None
status = [
    ("model, sampler, KV cache on CUDA (fp32 / bf16)", True, "section 2 above ran them on " + device.type),
    ("Triton kernels (log-probs, fused CHORD loss) in training on CUDA", True, "lm_head.kernel_backend()"),
    ("device / dtype / micro-batches / activation checkpointing in TrainConfig", has_device_option,
     "--device, --dtype; --set micro_batch_seqs=16 --set activation_checkpointing=true"),
    ("loading real Qwen2 / Llama weights from Hugging Face directories", has_hf_loader, "minichord/hf.py"),
    ("the GPU check: kernel tests on CUDA, kernel and training benchmarks", True, "bash benchmarks/gpu_check.sh"),
]
for what, ok, note in status:
    print(f"  [{'yes' if ok else 'no '}] {what}" + (f"  ({note})" if note else ""))
print("\n" + describe(device, "bf16" if device.type == "cuda" else "fp32"))
# `bash benchmarks/gpu_check.sh` on a GPU runs the kernel tests there, times both kernels (the token
# log-probs and the fused lm-head loss) against the memory-bandwidth bound it measures, and runs
# CHORD-phi steps of a Qwen2.5-0.5B-shaped model with the Triton and the torch path; `--dry-run` runs
# the same script on a CPU (the test suite does).