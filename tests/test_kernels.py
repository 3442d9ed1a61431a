"""Triton kernels (kernels/logprobs.py, kernels/fused_loss.py) against the torch references.

On a machine without CUDA the kernels run on CPU tensors under the Triton interpreter
(conftest.py sets TRITON_INTERPRET=1 before anything is imported). MINICHORD_TEST_DEVICE=cuda
(benchmarks/gpu_check.py) runs the kernels on the GPU instead; inputs are made and references
computed on the CPU either way. Shapes are odd (N=37, V=1000 / 5003) so every mask is
exercised. Each comparison reports its max abs error and the tolerance it was held to.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from minichord.kernels.fused_loss import triton_fused_token_loss
from minichord.kernels.logprobs import triton_token_logprobs
from minichord.config import LossConfig
from minichord.methods import LUFFY_LOSS
from minichord.losses import coefficients, ppo_clip_loss, token_coefficients
from minichord.lm_head import FusedLossOutput, reference_token_logprobs
from reference_impl import reference_fused_token_loss

DEVICE = torch.device(os.environ.get("MINICHORD_TEST_DEVICE", "cpu"))  # where the kernels run
N_TOKENS = 37
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative to the largest reference entry


def assert_close(name, got, want, rtol, atol=0.0):
    """llm.c style: max |got - want| <= rtol * max|want| + atol, reported either way."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if want.numel() else 0.0
    tol = rtol * (want.abs().max().item() if want.numel() else 0.0) + atol
    assert err <= tol, f"{name}: max abs err {err:.3e} > tol {tol:.3e}"


# ---------------------------------------------------------------------------------------
# Token log-probs


def _logprobs_case(vocab_size, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(N_TOKENS, vocab_size, generator=gen)).to(dtype)  # [N, V]
    targets = torch.randint(0, vocab_size, (N_TOKENS,), generator=gen)  # [N]
    targets[[3, 20]] = -100  # ignored rows
    grad_logp = torch.randn(N_TOKENS, generator=gen)  # [N] upstream gradients
    grad_entropy = torch.randn(N_TOKENS, generator=gen)  # [N]
    return logits, targets, grad_logp, grad_entropy


def _run_logprobs(fn, logits, targets, grad_logp, grad_entropy, temperature, return_entropy,
                  as_dtype=None):
    """-> outputs and d(sum g*out)/dlogits (on the CPU) for fn in {triton (on DEVICE), reference}."""
    device = DEVICE if fn is triton_token_logprobs else torch.device("cpu")
    x = logits.detach().to(device=device, dtype=as_dtype or logits.dtype).requires_grad_()
    out = fn(x, targets.to(device), temperature=temperature, return_entropy=return_entropy)
    logp, entropy = out if return_entropy else (out, None)
    objective = (grad_logp.to(device, logp.dtype) * logp).sum()
    if return_entropy:
        objective = objective + (grad_entropy.to(device, entropy.dtype) * entropy).sum()
    objective.backward()
    return logp.detach().cpu(), None if entropy is None else entropy.detach().cpu(), x.grad.cpu()


@pytest.mark.parametrize("vocab_size", [1000, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,return_entropy", [(1.0, False), (0.7, True)])
def test_token_logprobs_matches_reference(vocab_size, dtype, temperature, return_entropy):
    case = _logprobs_case(vocab_size, dtype)
    logp, entropy, grad = _run_logprobs(triton_token_logprobs, *case, temperature, return_entropy)
    # reference on the same (bf16-rounded) inputs; it upcasts to fp32 internally
    ref_logp, ref_entropy, ref_grad = _run_logprobs(reference_token_logprobs, *case, temperature,
                                                    return_entropy)
    assert logp.dtype == torch.float32 and grad.dtype == dtype
    tag = f"{dtype} V={vocab_size} T={temperature}"
    assert_close(f"logp {tag}", logp, ref_logp, 1e-5)
    assert_close(f"dlogits {tag}", grad, ref_grad, TOL[dtype])
    ignored = case[1] == -100
    assert (logp[ignored] == 0).all() and (grad[ignored] == 0).all()
    if return_entropy:
        assert_close(f"entropy {tag}", entropy, ref_entropy, 1e-5)
        assert (entropy[ignored] == 0).all()
    if dtype == torch.float32:  # and against an fp64 reference
        f64_logp, f64_entropy, f64_grad = _run_logprobs(
            reference_token_logprobs, *case, temperature, return_entropy, as_dtype=torch.float64)
        assert_close(f"logp vs fp64 {tag}", logp, f64_logp, 1e-5)
        assert_close(f"dlogits vs fp64 {tag}", grad, f64_grad, 1e-5)
        if return_entropy:
            assert_close(f"entropy vs fp64 {tag}", entropy, f64_entropy, 1e-5)


@pytest.mark.parametrize("through", ["logp", "entropy"])
def test_token_logprobs_fp16_one_output_differentiated(through):
    """fp16 logits; only one of the two outputs reaches the loss (the other's grad is None)."""
    logits, targets, _, _ = _logprobs_case(1000, torch.float16, seed=2)
    grads = []
    for fn, device in ((triton_token_logprobs, DEVICE), (reference_token_logprobs, "cpu")):
        x = logits.detach().to(device).requires_grad_()
        logp, entropy = fn(x, targets.to(device), temperature=1.5, return_entropy=True)
        (logp if through == "logp" else entropy).square().sum().backward()
        grads.append(x.grad.cpu())
    assert grads[0].dtype == torch.float16
    assert_close(f"fp16 dlogits through {through}", grads[0], grads[1], 2e-3)


@pytest.mark.parametrize("layout", ["row_stride", "column_stride"])
def test_token_logprobs_strided_input(layout):
    logits, targets, grad_logp, grad_entropy = _logprobs_case(1000, torch.float32, seed=1)
    if layout == "row_stride":  # rows 1013 apart, last dim contiguous: used as is
        strided = torch.zeros(N_TOKENS, 1013, device=DEVICE)[:, :1000]
    else:  # last-dim stride 2: copied to contiguous first
        strided = torch.zeros(N_TOKENS, 2000, device=DEVICE)[:, ::2]
    strided.copy_(logits)
    assert not strided.is_contiguous()
    got = _run_logprobs(triton_token_logprobs, strided, targets, grad_logp, grad_entropy, 0.9, True)
    want = _run_logprobs(reference_token_logprobs, logits, targets, grad_logp, grad_entropy, 0.9,
                         True)
    for name, g, w in zip(("logp", "entropy", "dlogits"), got, want):
        assert_close(f"{name} {layout}", g, w, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_peaked_row_keeps_true_class_gradient(dtype):
    """p(target) ~ 0.999: in bf16, 1 - p would round away; the kernel works in fp32."""
    vocab_size = 1000
    logits = torch.zeros(4, vocab_size)
    targets = torch.tensor([5, 6, 7, 8])
    logits[torch.arange(4), targets] = torch.tensor([13.8, 14.0, 14.5, 16.0])  # p ~ .999...
    logits = logits.to(dtype)
    ones = torch.ones(4)
    logp, _, grad = _run_logprobs(triton_token_logprobs, logits, targets, ones, ones, 1.0, False)
    _, _, ref_grad = _run_logprobs(reference_token_logprobs, logits, targets, ones, ones, 1.0,
                                   False, as_dtype=torch.float64)
    true_class = grad[torch.arange(4), targets].double()  # [4] = 1 - p
    want = ref_grad[torch.arange(4), targets]
    assert (logp.exp() > 0.998).all()
    assert (true_class > 0).all(), f"true-class gradient lost: {true_class.tolist()}"
    # fp32 softmax near 1 carries ~1e-6 absolute error; bf16 storage adds 2^-8 relative.
    # A bf16 (1 - p) would be 0 or 2^-8 = 3.9e-3 here, far outside either tolerance.
    rtol, atol = (0.0, 2e-6) if dtype == torch.float32 else (3e-2, 2e-6)
    assert_close(f"true-class dlogit {dtype}", true_class, want, rtol, atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_near_certain_tokens_with_large_logits_keep_their_logp(dtype):
    """Logits shifted by 1000 and a target that wins by a wide margin: logp ~ -1e-5. The kernels
    form (z_y - max) - log s; z_y - (max + log s) would lose the last bits of ~1000 (2.1e-5)."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(N_TOKENS, 301, generator=gen)  # [N, V]
    targets = torch.randint(0, 301, (N_TOKENS,), generator=gen)  # [N]
    logits[torch.arange(N_TOKENS), targets] = 16.0 + 0.25 * torch.arange(N_TOKENS)  # near-certain
    logits = (logits + 1000.0).to(dtype)  # the fp64 reference sees the same (rounded) values
    want = reference_token_logprobs(logits.double(), targets)  # fp64 reference, [N]
    assert (want > -1e-4).all() and (want < 0).all()
    got = triton_token_logprobs(logits.to(DEVICE), targets.to(DEVICE)).cpu()
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-6, f"log-probs kernel: logp max abs err {err:.2e} > 1e-6"
    # the fused loss on the same logits: weight = I, hidden = logits (fp32 matmul is exact here)
    eye = torch.eye(301, dtype=dtype)
    args = (logits, eye, targets, torch.full((N_TOKENS,), 1.0 / N_TOKENS), torch.zeros(N_TOKENS, dtype=torch.bool),
            torch.full((N_TOKENS,), -1.0), want.float() - 19.9, LossConfig())  # ratio ~ e^19.9
    out, grad_hidden, _ = _run_fused(triton_fused_token_loss, args, {})
    err = (out.logp.double() - want).abs().max().item()
    assert err <= 1e-6, f"fused loss kernel: logp max abs err {err:.2e} > 1e-6"
    _, ref_hidden, _ = _run_fused(reference_fused_token_loss, tuple(a.double() if torch.is_tensor(a) and
                                                                    a.is_floating_point() else a for a in args), {})
    # the true-class gradient is coef * g * (1 - p_y) = coef * g * -expm1(logp_y): ~1e-5 here, so the
    # ~3e-7 absolute fp32 error of logp becomes ~3 % of it (an fp32 torch log_softmax is no better);
    # computed as 1 - exp(logp) it was off by 100 %, a 4.4e8 gradient (A = -1, r ~ e^19.9)
    assert_close(f"grad hidden at ratio ~e^20 {dtype}", grad_hidden, ref_hidden, 5e-2)


def test_token_logprobs_bad_targets_raise():
    with pytest.raises(ValueError, match="outside"):
        triton_token_logprobs(torch.zeros(3, 10), torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="logits"):
        triton_token_logprobs(torch.zeros(3, 10, 2), torch.tensor([0, 1, 2]))


_INT64_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from minichord.kernels.logprobs import triton_token_logprobs
    from minichord.lm_head import reference_token_logprobs
    vocab, stride = 1000, 2**30  # row 2 starts at element 2^31: past int32
    storage = torch.empty(2 * stride + vocab, dtype=torch.bfloat16)  # 4 GiB, pages untouched
    logits = storage.as_strided((3, vocab), (stride, 1))
    values = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)).bfloat16()
    logits.copy_(values)
    targets = torch.tensor([1, 2, 3])
    logp = triton_token_logprobs(logits.requires_grad_(), targets)
    logp.sum().backward()
    err = (logp - reference_token_logprobs(values, targets)).abs().max().item()
    assert err < 1e-5, err
    print("ok", err)
""")


def test_token_logprobs_int64_row_offsets():
    """A view whose row stride is 2^30 puts row 2 at element 2^31. With int32 row offsets
    the kernel reads a wrapped (negative) address: the interpreter segfaults or returns
    garbage. Runs in a subprocess (the 4 GiB buffer is virtual; only touched pages count)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the interpreter (on GPU the 4 GiB buffer would be real)")
    proc = subprocess.run([sys.executable, "-c", _INT64_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    if "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr:
        pytest.skip("cannot reserve 4 GiB of virtual memory here")
    assert proc.returncode == 0 and "ok" in proc.stdout, (
        f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}")


_COMPILE_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from minichord.kernels import fused_loss, logprobs
    target = GPUTarget("cuda", 90, 32)

    def compile_(fn, signature, constexprs):
        signature = {**signature, **{name: "constexpr" for name in constexprs}}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        return triton.compile(src, target=target, options={"num_warps": 8})

    f32 = "*fp32"
    compile_(logprobs._token_logprobs_fwd_kernel, dict(
        logits_ptr="*bf16", row_stride="i32", targets_ptr="*i64", logp_ptr=f32, lse_ptr=f32,
        entropy_ptr=f32, vocab_size="i32", inv_temperature="fp32", ignore_index="i32"),
        dict(BLOCK_V=4096, WITH_ENTROPY=True))
    compile_(logprobs._token_logprobs_bwd_kernel, dict(
        logits_ptr="*bf16", row_stride="i32", grad_logits_ptr="*bf16", targets_ptr="*i64",
        lse_ptr=f32, entropy_ptr=f32, grad_logp_ptr=f32, grad_entropy_ptr=f32,
        vocab_size="i32", inv_temperature="fp32", ignore_index="i32"),
        dict(BLOCK_V=4096, HAS_GRAD_LOGP=True, HAS_GRAD_ENTROPY=True))
    signature = dict(logits_ptr="*bf16", targets_ptr="*i64", coef_ptr=f32, is_expert_ptr="*i8",
                     adv_ptr=f32, old_logp_ptr=f32, ref_logp_ptr=f32, loss_ptr=f32,
                     logp_ptr=f32, entropy_ptr=f32, clipped_ptr="*i8", vocab_size="i32")
    for name in ("inv_temperature", "eps_low", "eps_high", "dual_clip", "log_ratio_clamp",
                 "luffy_gamma", "entropy_coef", "kl_coef"):
        signature[name] = "fp32"
    for expert, flag in ((0, True), (1, False), (2, True), (3, False)):
        compile_(fused_loss._fused_token_loss_kernel, signature, dict(
            BLOCK_V=4096, EXPERT=expert, ONPOLICY_CLIP=flag, DUAL_CLIP=flag, HAS_KL=flag,
            HAS_ENTROPY_BONUS=flag, WRITE_GRAD=flag, IGNORE_INDEX=-100))
    print("ok")
""")


def test_kernels_compile_for_gpu():
    """The interpreter does not type-check like the compiler does (loop-carried types,
    constexpr branches): compile every kernel to sm_90 code, which needs no GPU."""
    import triton
    if torch.cuda.is_available():
        pytest.skip("on a GPU the other tests compile and run every kernel for real")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# Fused lm-head loss: lm head + CHORD token loss

HIDDEN, VOCAB = 48, 1000
LOG_RATIOS = torch.tensor([-0.6, -0.05, 0.05, 0.6, 1.5])  # r = .55 .95 1.05 1.8 4.5: some
# clipped, some dual-clipped, all far from the clip edges (bf16 error cannot flip a token)


def _fused_case(dtype, spec, *, mu=0.4, temperature=1.0, seed=0, padding=False):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N_TOKENS, HIDDEN, generator=gen).to(dtype)  # [N, H]
    weight = (0.4 * torch.randn(VOCAB, HIDDEN, generator=gen)).to(dtype)  # [V, H]
    logits = hidden.float() @ weight.float().T  # [N, V], only to place targets and old_logp
    targets = torch.randint(0, VOCAB, (N_TOKENS,), generator=gen)  # [N]
    targets[::2] = logits[::2].argmax(dim=1)  # likely tokens (p ~ 0.1-0.9): phi != is != none
    is_expert = torch.arange(N_TOKENS) % 3 == 0  # [N] mixed batch
    mask = torch.ones(N_TOKENS, dtype=torch.bool)
    mask[[4, 30]] = False  # response padding: coef 0
    if padding:
        targets[30] = -100
    coef = torch.zeros(N_TOKENS)  # [N]; response padding keeps 0, the rest as the trainer would
    coef[mask] = coefficients(is_expert[mask], is_expert[mask], None, None, LossConfig(**LUFFY_LOSS)) if mu is None \
        else token_coefficients(is_expert[mask], mu)
    advantages = torch.randn(N_TOKENS, generator=gen)  # [N]
    logp = reference_token_logprobs(logits, targets, temperature=temperature)  # [N]
    pick = torch.randint(0, len(LOG_RATIOS), (N_TOKENS,), generator=gen)
    old_logp = logp - LOG_RATIOS[pick]  # [N]
    ref_logp = logp + 0.3 * torch.randn(N_TOKENS, generator=gen)  # [N]
    return (hidden, weight, targets, coef, is_expert, advantages, old_logp, spec), \
        dict(ref_logp=ref_logp, temperature=temperature)


def _on(device, args, kwargs):
    move = lambda a: a.to(device) if torch.is_tensor(a) else a  # noqa: E731
    return [move(a) for a in args], {k: move(v) for k, v in kwargs.items()}


def _run_fused(fn, args, kwargs, **extra):
    """-> (outputs, grad hidden, grad weight), on the CPU; triton runs on DEVICE."""
    args, kwargs = _on(DEVICE if fn is triton_fused_token_loss else "cpu", args, kwargs)
    hidden = args[0].detach().clone().requires_grad_()
    weight = args[1].detach().clone().requires_grad_()
    out = fn(hidden, weight, *args[2:], **kwargs, **extra)
    (2.0 * out.loss).backward()  # grad_output != 1 exercises the backward scaling
    out = FusedLossOutput(*(t.detach().cpu() for t in (out.loss, out.logp, out.entropy, out.clipped)))
    return out, hidden.grad.cpu(), weight.grad.cpu()


def _compare_fused(args, kwargs, dtype, tag, chunk_size=10):
    out, grad_hidden, grad_weight = _run_fused(triton_fused_token_loss, args, kwargs,
                                               chunk_size=chunk_size)
    ref, ref_hidden, ref_weight = _run_fused(reference_fused_token_loss, args, kwargs)
    bf16 = dtype != torch.float32
    tol = TOL[dtype]
    assert grad_hidden.dtype == dtype and grad_weight.dtype == dtype
    # the loss is a signed sum that can nearly cancel: scale its tolerance by sum |coef|
    # (each token's loss moves by ~ its logp error, bf16 logits: ~1e-2)
    assert_close(f"loss {tag}", out.loss, ref.loss, 0.0,
                 atol=(2e-2 if bf16 else 1e-6) * args[3].abs().sum().item())
    assert_close(f"logp {tag}", out.logp, ref.logp, 0.0, atol=5e-2 if bf16 else 1e-5)
    assert_close(f"entropy {tag}", out.entropy, ref.entropy, 0.0, atol=5e-2 if bf16 else 1e-5)
    assert torch.equal(out.clipped, ref.clipped), f"clipped differ {tag}"
    assert_close(f"grad hidden {tag}", grad_hidden, ref_hidden, 1.5 * tol)
    assert_close(f"grad weight {tag}", grad_weight, ref_weight, 1.5 * tol)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighting", ["uniform", "phi", "is", "luffy"])
def test_fused_loss_matches_reference(weighting, dtype):
    spec = LossConfig(**LUFFY_LOSS) if weighting == "luffy" else LossConfig(expert_weighting=weighting)
    args, kwargs = _fused_case(dtype, spec, temperature=0.8 if weighting == "phi" else 1.0)
    out = _compare_fused(args, kwargs, dtype, f"{weighting} {dtype}")
    onpolicy = ~args[4]
    if not spec.luffy:  # LUFFY's on-policy term is unclipped
        assert out.clipped[onpolicy].float().mean() > 0.1, "clipping never active: weak test"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_dual_clip_entropy_kl(dtype):
    spec = LossConfig(dual_clip=3.0, entropy_coef=0.05, kl_coef=0.1, expert_weighting="phi")
    args, kwargs = _fused_case(dtype, spec, temperature=1.3, seed=1, padding=True)
    out = _compare_fused(args, kwargs, dtype, f"dual/entropy/kl {dtype}", chunk_size=8)
    assert out.logp[30] == 0 and out.entropy[30] == 0  # padding row (target -100)
    dual = (~args[4]) & (args[5] < 0) & (out.logp - args[6] > 1.0)
    assert out.clipped[dual].all() and dual.any(), "dual clip never active: weak test"


def test_fused_loss_unclipped_luffy_default_chunk():
    spec = LossConfig(**LUFFY_LOSS)
    args, kwargs = _fused_case(torch.float32, spec, mu=None, seed=2)
    out = _compare_fused(args, kwargs, torch.float32, "luffy unclipped", chunk_size=None)
    assert not out.clipped.any()
    with torch.no_grad():  # forward only: the kernel skips pass 2 (WRITE_GRAD=False)
        device_args, device_kwargs = _on(DEVICE, args, kwargs)
        eval_out = triton_fused_token_loss(*device_args, **device_kwargs, chunk_size=7)
    assert_close("no_grad loss", eval_out.loss.cpu(), out.loss, 1e-6)
    assert_close("no_grad logp", eval_out.logp.cpu(), out.logp, 1e-6)


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_fused_loss_mu_endpoints_are_grpo_and_sft(mu):
    """mu=0: exactly the GRPO gradient (expert rows contribute nothing); mu=1: exactly SFT."""
    spec = LossConfig()
    args, kwargs = _fused_case(torch.float32, spec, mu=mu, seed=3)
    hidden, weight, targets, coef, is_expert = args[:5]
    advantages, old_logp = args[5], args[6]
    _, grad_hidden, grad_weight = _run_fused(triton_fused_token_loss, args, kwargs, chunk_size=16)

    keep = coef > 0  # on-policy (mu=0) or expert (mu=1) tokens, unmasked
    assert torch.equal(keep, (is_expert if mu == 1.0 else ~is_expert) & (coef > 0))
    assert (grad_hidden[~keep] == 0).all(), "tokens of the other term leaked gradient"
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp = reference_token_logprobs(h[keep] @ w.T, targets[keep])  # [n]
    if mu == 0.0:
        per_token, _ = ppo_clip_loss(logp, old_logp[keep], advantages[keep], spec)
    else:
        per_token = -logp
    (2.0 * per_token.mean()).backward()
    assert_close(f"grad hidden mu={mu}", grad_hidden, h.grad, 1e-5)
    assert_close(f"grad weight mu={mu}", grad_weight, w.grad, 1e-5)


def test_fused_loss_bad_inputs_raise():
    spec = LossConfig(kl_coef=0.1)
    args, kwargs = _fused_case(torch.float32, spec)
    with pytest.raises(ValueError, match="ref_logp"):
        triton_fused_token_loss(*args, temperature=1.0)
    bad_targets = args[2].clone()
    bad_targets[0] = VOCAB
    with pytest.raises(ValueError, match="outside"):
        triton_fused_token_loss(args[0], args[1], bad_targets, *args[3:], **kwargs)
