"""The fused lm-head loss kernel: lm-head matmul + losses.chord_loss over token chunks (torch path: lm_head.py).

For each chunk of C tokens (the full [N, V] logits never exist):

    logits = hidden_c @ W^T                      [C, V], in the input dtype (one matmul)
    one Triton program per row:
        pass 1: online log-sum-exp (+ entropy) over vocab blocks, logp_t, token loss l_t and
                g_t = d l_t / d logp_t in fp32 registers; store l_t, logp_t, H_t, clipped_t
        pass 2: overwrite the row IN PLACE with d L / d logits (softmax recomputed)
    grad_hidden_c = dlogits @ W                  [C, H]
    grad_W       += dlogits^T @ hidden_c         [V, H], accumulated in fp32

The loss (minichord.losses.chord_loss, which the tests compare this kernel against):

    L = sum_t coef_t * l_t  -  entropy_coef * sum_{t on-policy} coef_t * H_t

Every l_t depends on the logits only through logp_t = z_{t,y_t} - lse_t (z = logits / T), so with
g_t = d l_t / d logp_t and kernels/logprobs.py's d logp / dz = onehot(y) - p, dH/dz = -p (log p + H):

    d L / d logits_t = coef_t * ( g_t (onehot(y_t) - p_t)
                                  + [on-policy] entropy_coef * p_t (log p_t + H_t) ) / T

g_t for each token kind (r = exp(clamp(logp - old_logp, -c_r, c_r)), A = advantage):

    PPO-clip       l = max(-A r, -A clip(r, 1-eps_low, 1+eps_high))   g = -A r, or 0 where a clip
                   [dual clip, A<0: l = min(l, -A c)]                 (PPO, dual, c_r) is active ("clipped")
    unclipped      l = -A r                                           g = -A r  (0 if |log r|>c_r)
    + k3 KL        l += kl_coef (e^d - d - 1), d = ref - logp         g += kl_coef (1 - e^d)
    SFT            l = -logp                                          g = -1
    SFT-phi        l = -sg(p (1 - p)) logp                            g = -p (1 - p)
    SFT-IS         l = -sg(p) logp                                    g = -p
    LUFFY          l = -A p / (p + gamma)                             g = -A gamma p / (p+gamma)^2
                   (d/dlogp f(p) = f'(p) p,  f'(p) = gamma / (p + gamma)^2)

Unlike the torch path, the matmul runs in the input dtype (fp32 accumulation): bf16 results agree to bf16 precision."""

import torch
import triton
import triton.language as tl

from minichord.kernels.logprobs import _block_v, _num_warps, _row_lse_entropy
from minichord.losses import IGNORE_INDEX, FusedLossOutput, check_fused_inputs

EXPERT_KIND = {"uniform": 0, "phi": 1, "is": 2, "luffy": 3}  # spec.expert_weighting
CHUNK_BYTES = {"cuda": 256 * 2**20, "cpu": 16 * 2**20}  # what one chunk's logits may take


@triton.jit
def _fused_token_loss_kernel(
    logits_ptr,  # [C, V] contiguous; overwritten with d L / d logits when WRITE_GRAD
    targets_ptr, coef_ptr, is_expert_ptr, adv_ptr, old_logp_ptr, ref_logp_ptr,  # [C]
    loss_ptr, logp_ptr, entropy_ptr, clipped_ptr,  # [C] outputs
    vocab_size, inv_temperature, eps_low, eps_high, dual_clip, log_ratio_clamp, luffy_gamma, entropy_coef, kl_coef,
    BLOCK_V: tl.constexpr, EXPERT: tl.constexpr, ONPOLICY_CLIP: tl.constexpr, DUAL_CLIP: tl.constexpr,
    HAS_KL: tl.constexpr, HAS_ENTROPY_BONUS: tl.constexpr, WRITE_GRAD: tl.constexpr, IGNORE_INDEX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * V may exceed 2^31
    row_ptr = logits_ptr + row * vocab_size
    target = tl.load(targets_ptr + row)
    ignored = target == IGNORE_INDEX  # padding: logp = H = 0, zero gradient row
    target = tl.where(ignored, 0, target)

    # ---- pass 1: online lse and entropy (see kernels/logprobs.py) -------------------------
    m, log_s, entropy = _row_lse_entropy(row_ptr, vocab_size, inv_temperature, BLOCK_V, True)
    lse, entropy = m + log_s, tl.where(ignored, 0.0, entropy)
    logp = tl.where(ignored, 0.0, (tl.load(row_ptr + target).to(tl.float32) * inv_temperature - m) - log_s)
    p = tl.exp(logp)

    # ---- token loss l and g = d l / d logp, both branches, selected by the token's kind ----
    adv = tl.load(adv_ptr + row).to(tl.float32)
    if EXPERT == 3:  # LUFFY, -A f(p)
        loss_exp = -adv * p / (p + luffy_gamma)
        g_exp = -adv * luffy_gamma * p / ((p + luffy_gamma) * (p + luffy_gamma))
    else:  # l = -sg(w) logp, g = -w: SFT w = 1, SFT-phi w = p (1 - p), SFT-IS w = p
        g_exp = tl.full((), -1.0, tl.float32) if EXPERT == 0 else (-p * (1.0 - p) if EXPERT == 1 else -p)
        loss_exp = g_exp * logp

    log_ratio = logp - tl.load(old_logp_ptr + row).to(tl.float32)
    ratio = tl.exp(tl.minimum(tl.maximum(log_ratio, -log_ratio_clamp), log_ratio_clamp))
    loss_on, clipped = -adv * ratio, tl.abs(log_ratio) > log_ratio_clamp
    if ONPOLICY_CLIP:
        loss_on = tl.maximum(loss_on, -adv * tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high))
        clipped = clipped | ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
        if DUAL_CLIP:
            loss_on = tl.where(adv < 0, tl.minimum(loss_on, -adv * dual_clip), loss_on)
            clipped = clipped | ((adv < 0) & (ratio > dual_clip))
    g_on = tl.where(clipped, 0.0, -adv * ratio)
    if HAS_KL:
        d = tl.load(ref_logp_ptr + row).to(tl.float32) - logp
        loss_on += kl_coef * (tl.exp(d) - d - 1.0)
        g_on += kl_coef * (1.0 - tl.exp(d))

    expert = tl.load(is_expert_ptr + row) != 0
    g = tl.where(expert, g_exp, g_on)
    tl.store(loss_ptr + row, tl.where(expert, loss_exp, loss_on))
    tl.store(logp_ptr + row, logp)
    tl.store(entropy_ptr + row, entropy)
    tl.store(clipped_ptr + row, (clipped & (expert == 0)).to(tl.int8))

    # ---- pass 2: d L / d logits, written over the logits -----------------------------------
    if WRITE_GRAD:
        coef = tl.where(ignored, 0.0, tl.load(coef_ptr + row).to(tl.float32))
        g_scaled = coef * g * inv_temperature
        # 1 - p_y = -expm1(logp_y): a series near p_y = 1, where 1 - exp(logp_y) would cancel
        one_minus_p_y = tl.where(logp > -1e-2, -logp * (1.0 + logp * (0.5 + logp * (1.0 / 6.0 + logp / 24.0))), 1.0 - p)
        ent_scaled = tl.where(expert, 0.0, coef * entropy_coef * inv_temperature)
        for start in range(0, vocab_size, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)  # [BLOCK_V]
            in_row = cols < vocab_size
            log_p = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(tl.float32) * inv_temperature - lse
            p_v = tl.exp(log_p)  # [BLOCK_V] softmax, fp32
            dx = g_scaled * tl.where(cols == target, one_minus_p_y, -p_v)  # (target 0 if ignored: coef 0)
            if HAS_ENTROPY_BONUS:  # - entropy_coef * coef * dH/dz,  dH/dz = -p (log p + H)
                dx += ent_scaled * p_v * (tl.where(p_v > 0, log_p, 0.0) + entropy)
            tl.store(row_ptr + cols, dx.to(logits_ptr.dtype.element_ty), mask=in_row)


class _TritonFusedTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp,
                spec, temperature, chunk_size, grad_enabled):
        n_tokens, vocab_size, device = hidden.shape[0], weight.shape[0], hidden.device
        # no gradient work under torch.no_grad() (needs_input_grad ignores the grad mode)
        need_grad_hidden, need_grad_weight = (grad_enabled and need for need in ctx.needs_input_grad[:2])
        f32 = dict(dtype=torch.float32, device=device)
        targets = targets.to(device=device, dtype=torch.int64).contiguous()  # [N]
        is_expert = is_expert.to(device=device, dtype=torch.int8).contiguous()  # [N]
        coef, advantages, old_logp = (t.to(**f32).contiguous() for t in (coef, advantages, old_logp))  # [N] each
        has_kl = spec.kl_coef > 0.0
        ref_logp = ref_logp.to(**f32).contiguous() if has_kl else old_logp  # dummy when unused
        hidden, weight = hidden.contiguous(), weight.contiguous()

        loss_tok, logp, entropy = (torch.empty(n_tokens, **f32) for _ in range(3))  # [N] each
        clipped = torch.empty(n_tokens, dtype=torch.int8, device=device)  # [N]
        grad_hidden = torch.empty_like(hidden) if need_grad_hidden else None  # [N, H]
        grad_weight = torch.zeros(weight.shape, **f32) if need_grad_weight else None  # [V, H]
        block_v = _block_v(vocab_size)
        if chunk_size is None:  # about CHUNK_BYTES of logits per chunk
            budget = CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]
            chunk_size = max(1, min(n_tokens, budget // (vocab_size * hidden.element_size())))
        for start in range(0, n_tokens, chunk_size):
            end = min(start + chunk_size, n_tokens)
            hidden_chunk = hidden[start:end]  # [C, H]
            logits = hidden_chunk @ weight.T  # [C, V], input dtype
            _fused_token_loss_kernel[(end - start,)](
                logits, *(t[start:end] for t in (targets, coef, is_expert, advantages, old_logp, ref_logp,
                                                  loss_tok, logp, entropy, clipped)),
                vocab_size, 1.0 / temperature, spec.eps_low, spec.eps_high, float(spec.dual_clip or 0.0),
                spec.log_ratio_clamp, spec.luffy_gamma, spec.entropy_coef, spec.kl_coef,
                BLOCK_V=block_v, EXPERT=EXPERT_KIND[spec.expert_weighting], ONPOLICY_CLIP=not spec.luffy, HAS_KL=has_kl,
                DUAL_CLIP=spec.dual_clip is not None, WRITE_GRAD=need_grad_hidden or need_grad_weight,
                HAS_ENTROPY_BONUS=spec.entropy_coef > 0.0, IGNORE_INDEX=IGNORE_INDEX, num_warps=_num_warps(block_v))
            if need_grad_hidden:
                torch.mm(logits, weight, out=grad_hidden[start:end])  # [C, H]
            if need_grad_weight:
                grad_weight.add_(logits.T @ hidden_chunk)  # [V, H], fp32 accumulation
            del logits

        loss = (coef * loss_tok).sum() - spec.entropy_coef * (coef * entropy * (is_expert == 0)).sum()
        ctx.save_for_backward(grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        clipped = clipped.bool()
        ctx.mark_non_differentiable(logp, entropy, clipped)
        return loss, logp, entropy, clipped

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grads = [g * grad_loss.to(g.dtype) if g is not None and need else g
                 for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]  # [N, H], [V, H]
        return *grads, *([None] * 10)


def triton_fused_token_loss(hidden, weight, targets, coef, is_expert, advantages, old_logp, spec, *,
                            ref_logp: torch.Tensor | None = None, temperature=1.0, chunk_size: int | None = None):
    """The contract of minichord.lm_head.fused_token_loss (-> losses.FusedLossOutput); math: module docstring."""
    check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp, spec,
                       temperature, chunk_size)
    if hidden.dtype != weight.dtype or hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"hidden and weight must share a float dtype (fp32/fp16/bf16), "
                         f"got {hidden.dtype} and {weight.dtype}")
    return FusedLossOutput(*_TritonFusedTokenLoss.apply(hidden, weight, targets, coef, is_expert, advantages, old_logp,
                                                        ref_logp, spec, float(temperature), chunk_size,
                                                        torch.is_grad_enabled()))
