# %% [markdown]
# # 08 — Running on one GPU
#
# Everything so far ran on a laptop CPU. What changes on one GPU, what is supported today,
# and what is not yet. This file runs anywhere: on a CPU it prints what it would do and runs
# the same small checks on the CPU.
#
# What changes:
#
# 1. **Kernels.** `minichord.ops` dispatches the two hot ops (token log-probs, fused lm-head +
#    CHORD loss) to the Triton kernels for CUDA tensors, and to torch code elsewhere.
#    `MINICHORD_KERNELS=torch|triton` forces one (e.g. `torch` to rule out a kernel bug).
# 2. **Precision.** bf16 weights and activations; the loss math stays fp32 inside the kernels.
# 3. **Size.** A bigger `ModelConfig`, bigger batches (prompts x group size, expert demos,
#    response length): the logits, the KV cache and the optimizer state set the limits.

# %%
import dataclasses
import os

import torch

import minichord.config
import minichord.model
from minichord import ops
from minichord.config import ModelConfig, SamplerConfig, TrainConfig
from minichord.losses import TokenLossSpec, token_coefficients
from minichord.model import Transformer
from minichord.sampler import generate

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"torch {torch.__version__}; device: {device}"
      + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else " (no CUDA: CPU fallback)"))
torch.manual_seed(0)

# %% [markdown]
# ## 1. Kernel dispatch

# %%
print(f"ops.kernel_backend() = {ops.kernel_backend()!r} with MINICHORD_KERNELS={os.environ.get('MINICHORD_KERNELS', '')!r}")
saved = os.environ.get("MINICHORD_KERNELS")
os.environ["MINICHORD_KERNELS"] = "torch"
print(f"  with MINICHORD_KERNELS=torch -> {ops.kernel_backend()!r}")
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
logp32 = ops.token_logprobs(logits32, targets)  # dispatched: Triton on CUDA, torch on CPU
logp16 = ops.token_logprobs(logits16, targets)  # bf16 logits in, fp32 log-probs out
ref32 = ops.reference_token_logprobs(logits32, targets)
err_kernel = (logp32 - ref32).abs().max().item()
err_bf16 = (logp16 - logp32).abs().max().item()
print(f"ops.token_logprobs vs torch reference (fp32): max |diff| = {err_kernel:.1e} (tolerance 1e-4)")
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
fused = ops.fused_token_loss(hidden, model16.lm_head_weight, targets, coef, is_expert, adv,
                             torch.where(is_expert, 0.0, logp16), TokenLossSpec(expert_weighting="phi"))
fused.loss.backward()
grad = model16.embed_tokens.weight.grad
print(f"fused CHORD-phi loss {fused.loss.item():+.4f}; lm-head grad {grad.dtype}, finite: {bool(torch.isfinite(grad).all())}")
assert torch.isfinite(fused.loss) and torch.isfinite(grad).all()

# %% [markdown]
# ## 3. Sizing a bigger model
#
# `ModelConfig` describes any Qwen2-family shape. Building on the `meta` device gives exact
# parameter counts without allocating anything. Per model, the numbers that decide whether a
# run fits on one GPU:
#
# * training state with AdamW when weights are fp32: 4 (weights) + 4 (grads) + 8 (two moments)
#   = 16 bytes per parameter; with bf16 weights and grads (fp32 moments): 2 + 2 + 8 = 12;
# * KV cache per sampled token: 2 (k, v) x layers x kv_heads x head_dim x 2 bytes (bf16);
# * logits per token: vocab x 2 bytes in bf16 (tutorial 03: the fused loss never holds more than
#   a chunk of them).

# %%
configs = {
    "toy (default)": ModelConfig(),
    "small (29M)": ModelConfig(vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536,
                             max_seq_len=1024),
    "Qwen2.5-0.5B shape": ModelConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                                      ffn_dim=4864, max_seq_len=32768, rope_theta=1e6),
}
print(f"{'config':20s} {'params':>9s} {'train state fp32':>16s} {'bf16+fp32 Adam':>14s} "
      f"{'KV/token':>9s} {'logits/token':>12s}")
for name, c in configs.items():
    with torch.device("meta"):
        n_params = Transformer(c).num_params()
    kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2
    print(f"{name:20s} {n_params / 1e6:8.1f}M {n_params * 16 / 1e9:13.2f} GB {n_params * 12 / 1e9:11.2f} GB "
          f"{kv / 1e3:7.1f} KB {c.vocab_size * 2 / 1e3:9.1f} KB")
# Example, the paper's batch for the 0.5B shape: 32 prompts x 8 rollouts of up to 4096 tokens
# = 1M tokens of KV cache if sampled at once: 12 KB x 1M = 12.6 GB, in addition to ~6 GB
# of training state. That fits an 80 GB GPU; the logits of all those tokens (151936 x 2 bytes
# x 1M = 311 GB) could never be held at once, which is why the loss is fused and chunked.

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
# `minibatches` splits one rollout batch into several *optimizer steps* (PPO-style); it is not
# gradient accumulation.

# %% [markdown]
# ## 5. What is and is not supported yet
#
# Checked against the code, not promised: the lines below are computed when you run the file.

# %%
train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
has_device_option = "device" in train_fields
has_hf_loader = any(hasattr(mod, "from_hf") for mod in (minichord.config, minichord.model))
status = [
    ("model, sampler, KV cache on CUDA (fp32 / bf16)", True, "section 2 above ran them on " + device.type),
    ("Triton kernels (log-probs, fused CHORD loss) on CUDA", True, "dispatch by ops.kernel_backend()"),
    ("TrainConfig has a device setting (trainer on GPU end to end)", has_device_option,
     "" if has_device_option else "not yet: the Trainer and prepare_run build their batches on the CPU"),
    ("loading real Qwen2 weights from Hugging Face", has_hf_loader,
     "" if has_hf_loader else "planned: parameter names already follow Qwen2's, so it is a renaming; not done"),
]
for what, ok, note in status:
    print(f"  [{'yes' if ok else 'no '}] {what}" + (f"  ({note})" if note else ""))
# So today, a GPU run means: the library pieces (model, sampler, ops, kernels) and the
# benchmarks in benchmarks/ (`python benchmarks/bench_kernels.py`). Toy training runs on the CPU.
