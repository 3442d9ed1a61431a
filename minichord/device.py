"""Where a run computes and in which precision: `device` (auto | cpu | cuda), `dtype` (fp32 | bf16).

bf16: fp32 weights, gradients and AdamW moments; bf16 autocast matrix products; fp32 residual stream, norms and
loss math; the fused lm-head loss gets bf16 hidden states and lm-head (`loss_dtype`), fp32 log-softmax and loss."""

import contextlib

import torch

from minichord.config import DEVICES, DTYPES, ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda" without CUDA -> ConfigError; a torch.device as it is."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise ConfigError(f"device={name!r}: must be one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"device='cuda': CUDA is not available here ({why}, torch {torch.__version__}); "
                          f"use device=cpu or device=auto")
    return torch.device(name)


def autocast(device: torch.device | str, dtype: str | torch.dtype = "fp32"):
    """A context: bf16 autocast on `device` for dtype bf16, nothing for fp32."""
    dtype = loss_dtype(dtype)
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on `device` now, or None outside autocast (for the sampler's KV cache)."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def loss_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """The dtype the fused loss's inputs (hidden, lm-head weight) are cast to: None (unchanged) under fp32."""
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(dtype, dtype)
    return None if dtype == torch.float32 else dtype


def describe(device: torch.device, dtype: str) -> str:
    """The line a run starts with: which loss / log-prob backend, device and dtype."""
    from minichord import lm_head

    backend = ("triton fused (kernels/fused_loss.py), log-probs triton (kernels/logprobs.py)"
               if lm_head.kernel_backend(device) == "triton"
               else "torch chunked (minichord/lm_head.py), log-probs torch")
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"loss backend: {backend}, device {device.type}{name}, dtype {dtype}"
