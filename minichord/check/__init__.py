"""`minichord check`: your CHORD loss and gradient against minichord's reference (check/recompute.py), diagnosed.

On a mismatch every combination of the conventions' choices (recompute.SEARCHED) and of the known bugs
(recompute.BUGS) is tried, fewest changes first; the variants that reproduce your numbers are reported in words."""

import collections
import dataclasses
import itertools
from pathlib import Path

from minichord.check.dump import Dump, load_dump
from minichord.check.recompute import (ATOL, BUGS, NO_CLAMP, RTOL, SEARCHED, Reference, agrees, convention_rules,
                                       grad_scale, reference, token_advantages)
from minichord.config import AGGREGATIONS, SINGLETONS, STDS, LossConfig
from minichord.methods import CONVENTIONS


Cause = collections.namedtuple("Cause", "key text")  # key: a stable name, e.g. "no_dual_clip"


def _cause(field: str, target, found) -> Cause:
    """One difference between the target convention and a variant that reproduces the numbers, in words."""
    if field == "aggregation":
        return {"token-mean": Cause("token_mean", f"one global token-mean per term instead of the target's {target} "
                                    "aggregation"),
                "sequence-mean": Cause("sequence_mean", "per-sequence mean instead of token mean: each sequence "
                                       "averaged over its tokens first, then the sequences"),
                "micro-batch": Cause("micro_batch_weighting", "per-micro-batch token means weighted by each "
                                     "micro-batch's share of the side's sequences (the official code's "
                                     "aggregation)")}[found]
    if field == "dual_clip" and found is None:
        return Cause("no_dual_clip", f"dual clip missing: the target bounds the loss of A < 0 tokens at -A*{target}")
    if field == "dual_clip":
        return Cause("dual_clip", f"dual clip c = {found} applied to A < 0 tokens; the target has "
                     + ("none" if target is None else f"c = {target}"))
    if field == "log_ratio_clamp" and found == NO_CLAMP:
        return Cause("no_clamp", f"no log-ratio clamp: the target clamps logp - old_logp to +-{target} before exp")
    if field == "log_ratio_clamp":
        return Cause("clamp", f"logp - old_logp clamped to +-{found} before exp; the target does not clamp")
    if field == "singleton":
        what = {"zero": "A = 0", "official": "A = R / (1 + 1e-6)"}
        return Cause("wrong_singleton", f"wrong singleton handling: a group of one got {what[found]}, "
                     f"the target gives {what[target]}")
    if field == "std":
        return Cause("biased_std" if found == "biased" else "unbiased_std",
                     f"{found} std in the group advantages (divides by {'G' if found == 'biased' else 'G - 1'}); "
                     f"the target's is {target}")
    return Cause(field, {"phi_not_detached": "phi not detached: the expert weight p(1-p) (or p) keeps its gradient; "
                                             "it must be a stop-gradient",
                         "first_micro_batch_only": "micro-batches dropped in accumulation: only the first "
                                                   "micro-batch's gradient is kept",
                         "last_micro_batch_only": "micro-batches dropped in accumulation: only the last micro-batch's "
                                                  "gradient is kept (zero_grad inside the accumulation loop?)"}[field])


def variants(d: Dump, target: LossConfig) -> list[tuple[LossConfig, str | None]]:
    """Every (rules, bug) worth trying on `d`, fewest changes from `target` first."""
    luffy, grouped = d.weighting == "luffy", d.rewards is not None and d.weighting != "luffy"
    n_mb = 0 if d.micro_batch is None else d.micro_batch[d.mask.any(1)].unique().numel()
    dims = {"aggregation": () if luffy else AGGREGATIONS[:3 if n_mb >= 2 else 2],  # 1 micro-batch: = token-mean
            "dual_clip": () if luffy else (None, 3.0, target.dual_clip),
            "log_ratio_clamp": (20.0, NO_CLAMP, target.log_ratio_clamp),
            "singleton": SINGLETONS if grouped else (), "std": STDS[:2] if grouped else ()}
    bugs = [None] + (["phi_not_detached"] if d.weighting in ("phi", "is") else []) + \
        (list(BUGS[1:]) if n_mb >= 2 and not luffy else [])
    choices = {k: dict.fromkeys((getattr(target, k), *v)) for k, v in dims.items() if v}  # the target's own value
    out = dict.fromkeys((dataclasses.replace(target, **dict(zip(choices, values))), bug)  # always: no needless change
                        for values in itertools.product(*choices.values()) for bug in bugs)  # ordered, no repeats
    return sorted(out, key=lambda v: len(_changes(target, *v)))


def _changes(target: LossConfig, rules: LossConfig, bug: str | None) -> list[Cause]:
    out = [_cause(f, getattr(target, f), v) for f in SEARCHED if (v := getattr(rules, f)) != getattr(target, f)]
    return out + ([_cause(bug, None, None)] if bug else [])


Diagnosis = collections.namedtuple("Diagnosis", "rules bug causes preset")  # the target + causes; preset: its name
TokenDiff = collections.namedtuple("TokenDiff", "index sequence position theirs ours")  # index: among masked tokens


@dataclasses.dataclass
class CheckResult:
    match: bool
    convention: str
    rules: LossConfig
    loss_theirs: float
    ours: Reference
    first_diffs: list[TokenDiff]
    n_diff: int
    rtol: float
    atol: float
    diagnoses: list[Diagnosis] = dataclasses.field(default_factory=list)
    untested: list[str] = dataclasses.field(default_factory=list)  # choices this batch cannot tell apart
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def causes(self) -> list[str]:
        """Cause keys of the simplest diagnosis (empty on a match or when nothing reproduces the numbers)."""
        return [c.key for c in self.diagnoses[0].causes] if self.diagnoses else []

    def report(self) -> str:
        """The text `minichord check` prints: verdict, tolerance, terms, differing tokens, diagnosis."""
        o, c, name = self.ours, self.rules, self.convention
        (a, b), g = o.weights, "(1 - mu)" if o.weights != (1.0, 1.0) else "1"
        lines = [f"convention {name}: aggregation {c.aggregation}, dual clip {c.dual_clip or 'off'}, log-ratio "
                 f"clamp {c.log_ratio_clamp}, a group of one: {c.singleton}, std {c.std}",
                 f"tolerance: |theirs - ours| <= {self.atol:g} * scale + {self.rtol:g} * |ours| (loss scale "
                 f"{o.loss_scale:.3g}, gradient scale median|ours| = {grad_scale(o.grad):.3g})",
                 f"loss: theirs {self.loss_theirs:.10g}, ours {o.loss:.10g} = {g} * L_GRPO + "
                 f"{'mu' if g != '1' else '1'} * L_SFT = {a:g} * {o.grpo:.8g} + {b:g} * {o.sft:.8g}",
                 f"grad_logp: {self.n_diff} of {len(o.grad)} tokens differ"]
        lines += [f"  token {t.index} (sequence {t.sequence}, position {t.position}): theirs {t.theirs:.8g}, "
                  f"ours {t.ours:.8g}" for t in self.first_diffs]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"not tested by this batch (same numbers either way): {u}" for u in self.untested]
        if self.match:
            return "\n".join(["match: your loss and gradient equal minichord's within tolerance"] + lines)
        lines.insert(0, "mismatch: your loss or gradient differs from minichord's")
        if not self.diagnoses:
            lines.append("diagnosis: no known convention or bug reproduces your numbers")
        for k, dg in enumerate(self.diagnoses):
            head = "diagnosis: your numbers are reproduced by" if k == 0 else "or equally by"
            preset = f" (= the {dg.preset!r} preset: --convention {dg.preset})" if dg.preset else ""
            lines.append(f"{head} convention {name} with {len(dg.causes)} change(s){preset}:")
            lines += [f"  - [{cause.key}] {cause.text}" for cause in dg.causes]
        return "\n".join(lines)


def check_batch(dump: Dump | str | Path, convention: str | None = None,
                rtol: float = RTOL, atol: float = ATOL) -> CheckResult:
    """Compare a dump's loss and gradient with minichord's under `convention` (default: the dump's)."""
    d = dump if isinstance(dump, Dump) else load_dump(dump)
    name = convention or d.convention
    target = convention_rules(name, d.weighting)
    theirs = d.flat(d.grad_logp)  # [N]
    ours = reference(d, target, memo=(memo := {}))
    ok, tok_ok = agrees(ours, d.loss, theirs, rtol, atol)
    pos = d.mask.nonzero()  # [N, 2]
    bad = (~tok_ok).nonzero()[:, 0].tolist()
    diffs = [TokenDiff(i, int(pos[i, 0]), int(pos[i, 1]), theirs[i].item(), ours.grad[i].item()) for i in bad[:5]]
    result = CheckResult(ok, name, target, d.loss, ours, diffs, len(bad), rtol, atol)
    if d.rewards is not None and d.advantages is not None and d.weighting != "luffy":
        on = ~d.flat(d.is_expert)
        if (differ := ((token_advantages(d, target) - d.flat(d.advantages)).abs() > 1e-5)[on]).any():  # [N_on]
            result.notes.append(f"your advantages differ from minichord's ({name} convention, from your rewards) "
                                f"on {int(differ.sum())} of {int(on.sum())} on-policy tokens")
    if d.rewards is None and d.weighting != "luffy":
        result.notes.append("advantages given, not rewards: group-advantage choices (std, a group of one) not checked")
    if d.micro_batch is None and d.weighting != "luffy":
        result.notes.append("no micro_batch ids: micro-batch weighting and dropped micro-batches not checked")
    found_level, closest = None, (len(bad), [])  # closest: (tokens still differing, changes)
    for rules, bug in variants(d, target):
        changes = _changes(target, rules, bug)
        if ok and len(changes) > 1:
            break  # a match needs only the single-change scan (for `untested`)
        if not changes or (found_level is not None and len(changes) > found_level):
            continue
        ref = reference(d, rules, bug, memo)
        if len(changes) == 1 and agrees(ref, ours.loss, ours.grad, rtol, atol)[0]:
            result.untested.append(changes[0].text)  # this batch cannot tell the target from this change
            continue
        same, tok_ok = agrees(ref, d.loss, theirs, rtol, atol)
        if not ok and same:
            found_level = len(changes)
            preset = next((n for n in CONVENTIONS if not bug and convention_rules(n, d.weighting) == rules), None)
            result.diagnoses.append(Diagnosis(rules, bug, changes, preset))
        elif int((~tok_ok).sum()) < closest[0]:
            closest = (int((~tok_ok).sum()), changes)
    if not ok and not result.diagnoses and closest[1]:
        result.notes.append(f"closest variant: {', '.join(c.key for c in closest[1])} (still {closest[0]} of "
                            f"{len(theirs)} tokens differ): look for a mistake of another kind there")
    return result
