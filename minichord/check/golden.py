"""Golden cases: small named batches with minichord's expected CHORD loss and gradient, written by
scripts/make_golden.py; the files, the pass rule and the signature of your function: minichord/check/README.md."""

import collections
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from minichord.check.recompute import grad_scale, within
from minichord.config import CATALOGUE

HERE, VERSION = Path(__file__).resolve().parent, 1


GoldenCase = collections.namedtuple("GoldenCase", "name description settings tensors")  # settings: the json entry


def load_cases(convention: str | None = None, directory: Path = HERE, bugs: bool = False) -> list[GoldenCase]:
    """Every golden case (of one convention when given; bugs=True: the cases with a bug planted), in file order."""
    from safetensors.torch import load_file

    index = json.loads((directory / f"cases-v{VERSION}.json").read_text(encoding="utf-8"))
    data = load_file(str(directory / f"cases-v{VERSION}.safetensors"))
    return [GoldenCase(c["name"], c["description"], c, {f: data[f"{c['name']}.{f}"] for f in c["tensors"]})
            for c in index["cases"] if convention in (None, c["convention"]) and ("bug" in c) == bugs]


def run_case(fn: Callable, case: GoldenCase, rtol: float = 1e-5, atol: float = 1e-7) -> tuple[str, str]:
    """("pass" | "fail" | "skip", detail) of `fn` on one case."""
    t, s = case.tensors, case.settings
    logp = t["logp"].clone().requires_grad_(True)  # [B, T]
    try:
        out = fn(logp, t["old_logp"].clone(), None if s["advantages_from_rewards"] else t["advantages"].clone(),
                 t["mask"].clone(), t["is_expert"].clone(), mu=s["mu"], weighting=s["weighting"],
                 eps_low=s["eps_low"], eps_high=s["eps_high"], micro_batch=t.get("micro_batch"),
                 rewards=t.get("rewards"), group_ids=t.get("group_ids"))
        loss, grad = out if isinstance(out, tuple) else (out, None)
        if grad is None:
            (grad,) = torch.autograd.grad(loss, logp, allow_unused=True)
            grad = torch.zeros_like(logp) if grad is None else grad
        loss = float(torch.as_tensor(loss).detach().reshape(()).item())
        grad = torch.as_tensor(grad).detach().double().reshape(logp.shape)
    except NotImplementedError as e:
        return "skip", str(e) or "NotImplementedError"
    except Exception as e:  # the user's code failing on a case is a failed case, not a crash
        return "fail", f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    want, mask, expected = s["expected"], t["mask"], t["grad_logp"]
    if not within(loss, want["loss"], want["loss_scale"], rtol, atol):
        return "fail", f"loss {loss:.10g}, expected {want['loss']:.10g}"
    if len(bad := (~within(grad, expected, grad_scale(expected[mask]), rtol, atol) & mask).nonzero()):  # [n_bad, 2]
        i, j = bad[0].tolist()
        return "fail", (f"grad_logp differs at {len(bad)} token(s), first at sequence {i}, position {j}: "
                        f"{grad[i, j].item():.10g}, expected {expected[i, j].item():.10g}")
    return "pass", ""


def import_function(spec: str) -> Callable:
    """`module:function` -> the function; the user asked for this import by naming it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--golden {spec!r}: must be MODULE:FUNCTION, e.g. my_trainer.losses:chord_loss")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--golden {spec!r}: cannot import module {module_name!r}: {e}") from None
    if not callable(fn := getattr(module, attr, None)):
        raise ValueError(f"--golden {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


def run_golden(spec_or_fn, convention: str = "paper", log: Callable[[str], None] = print) -> int:
    """Run a function over the golden cases of `convention`, a line per case and a summary: 0 if none fails, else 1."""
    fn = import_function(spec_or_fn) if isinstance(spec_or_fn, str) else spec_or_fn
    convention = next((n for n, c in CATALOGUE["convention"].items() if convention in (n, c.get("also"))), convention)
    counts, cases = dict.fromkeys(("pass", "fail", "skip"), 0), load_cases(convention)
    for case in cases:
        status, detail = run_case(fn, case)
        counts[status] += 1
        log(f"{status.upper():4s} {case.name}" + (f": {detail}" if detail else ""))
    log(f"golden cases v{VERSION} ({convention}): {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['skip']} skipped of {len(cases)}")
    return 1 if counts["fail"] else 0
