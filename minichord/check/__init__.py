"""`minichord check`: your CHORD loss and gradient against minichord's reference (check/recompute.py), diagnosed: on a
mismatch the rules (recompute.SEARCHED) and catalogue bugs are tried, fewest changes first, and named in words."""

import collections
import dataclasses
import itertools
from pathlib import Path

from minichord.check.dump import Dump, load_dumps
from minichord.check.recompute import (ATOL, NO_CLAMP, RTOL, SEARCHED, Reference, agrees, convention_rules,
                                       grad_scale, reference, token_advantages)
from minichord.config import AGGREGATIONS, CATALOGUE, SINGLETONS, STDS, LossConfig

MAX_CHANGES = 3  # a diagnosis names at most this many changes


Cause = collections.namedtuple("Cause", "key text")  # key: a stable name, e.g. "no_dual_clip" or a catalogue bug


def bug_cause(key: str) -> Cause:
    """A catalogue bug as a cause: its summary and source (generation_normaliser/S: with its S)."""
    name, _, arg = key.partition("/")
    entry = CATALOGUE["bug"][name]
    return Cause(name, entry["summary"] + (f" [here S = {arg}]" if arg else "") + f" ({entry['source']})")


WORDS = {None: "none", NO_CLAMP: "none", "zero": "A = 0", "official": "A = R / (1 + eps)",
         **CATALOGUE["aggregation"]}  # a rule's value in a cause's text


def _cause(field: str, target, found) -> Cause:
    """One difference between the target convention and a variant that reproduces the numbers, in words."""
    if field == "aggregation":
        bug = next((k for k, b in CATALOGUE["bug"].items() if b.get("aggregation") == found[0]
                    and b.get("instead_of") == target[0]), None)  # another aggregation that is a known bug
        if bug:
            return bug_cause(bug)
        key, target, found = found[0].replace("-", "_"), " / ".join(filter(None, target)), found[0]
    else:
        key = {"dual_clip": "dual_clip" if found else "no_dual_clip", "singleton": "wrong_singleton",
               "log_ratio_clamp": "no_clamp" if found == NO_CLAMP else "clamp", "std": f"{found}_std",
               "std_eps": "std_eps"}[field]
    text = CATALOGUE["change"]["aggregation" if field == "aggregation" else key]
    return Cause(key, text.format(target=_words(target), found=_words(found)))


def _words(value) -> str:  # a rule's value as a cause's text says it
    return f"{value:g}" if isinstance(value, float) and value != NO_CLAMP else WORDS.get(value, str(value))


def _value(rules: LossConfig, field: str):
    return (rules.aggregation, rules.sft_aggregation) if field == "aggregation" else getattr(rules, field)


def variants(d: Dump, target: LossConfig) -> list[tuple[LossConfig, str | None]]:
    """Every (rules, bug) worth trying on `d` with at most MAX_CHANGES changes from `target`, fewest first."""
    luffy, grouped = d.weighting == "luffy", d.rewards is not None and d.weighting != "luffy"
    n_cells = 0 if d.micro_batch is None else d.micro_batch[d.mask.any(1)].unique().numel()
    G = d.steps()[1]
    aggregations = [(a, None) for a in AGGREGATIONS[:-1] if n_cells >= 2 or "micro" not in a]  # 1 cell: = batch's
    dims = {"aggregation": () if luffy else aggregations, "dual_clip": () if luffy else (None, 3.0),
            "log_ratio_clamp": (20.0, NO_CLAMP), "singleton": SINGLETONS if grouped else (),
            "std": STDS[:2] if grouped else (), "std_eps": (1e-6, 1e-4) if grouped and target.std != "none" else ()}
    bugs = [None] + (["phi_not_detached"] if d.weighting in ("phi", "is") else [])
    if G >= 2 and not luffy:
        bugs += ["first_micro_batch_only", "last_micro_batch_only", "accumulation_divided_twice"] + \
            [f"generation_normaliser/{S}" for S in range(1, G) if G % S == 0] + \
            ["middle_micro_batches_dropped"] * (G >= 3)
    choices = {k: dict.fromkeys((_value(target, k), *v)) for k, v in dims.items() if v}  # the target's own value
    out = {}  # always: no needless change; ordered, no repeats
    for values in itertools.product(*choices.values()):
        fields = dict(zip(choices, values))
        if "aggregation" in fields:
            fields["aggregation"], fields["sft_aggregation"] = fields["aggregation"]
        rules = dataclasses.replace(target, **fields)
        n = sum(_value(rules, f) != _value(target, f) for f in SEARCHED)
        out.update({(rules, bug): n + (bug is not None) for bug in bugs if n + (bug is not None) <= MAX_CHANGES})
    return sorted(out, key=out.get)


def _changes(target: LossConfig, rules: LossConfig, bug: str | None) -> list[Cause]:
    out = [_cause(f, _value(target, f), v) for f in SEARCHED if (v := _value(rules, f)) != _value(target, f)]
    return out + ([bug_cause(bug)] if bug else [])


Diagnosis = collections.namedtuple("Diagnosis", "rules bug causes")  # the target + causes
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
    matches: list[str] = dataclasses.field(default_factory=list)  # other conventions that give these numbers

    @property
    def causes(self) -> list[str]:
        """Cause keys of the simplest diagnosis (empty on a match or when nothing reproduces the numbers)."""
        return [c.key for c in self.diagnoses[0].causes] if self.diagnoses else []

    def report(self) -> str:
        """The text `minichord check` prints: verdict, tolerance, terms, differing tokens, diagnosis."""
        o, c, name = self.ours, self.rules, self.convention
        (a, b), g = o.weights, "(1 - mu)" if o.weights != (1.0, 1.0) else "1"
        lines = [f"convention {name}: aggregation {c.aggregation}" + (f" (SFT term: {c.sft_aggregation})" if
                 c.sft_aggregation else "") + f", dual clip {c.dual_clip or 'off'}, log-ratio clamp "
                 f"{c.log_ratio_clamp}, a group of one: {c.singleton}, std {c.std} (+ {c.std_eps:g})",
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
        lines += [f"your numbers match convention {m} (--convention {m})" for m in self.matches]
        if not self.diagnoses:
            lines.append("diagnosis: no known convention or bug reproduces your numbers")
        for k, dg in enumerate(self.diagnoses):
            head = "diagnosis: your numbers are reproduced by" if k == 0 else "or equally by"
            lines.append(f"{head} convention {name} with {len(dg.causes)} change(s):")
            lines += [f"  - [{cause.key}] {cause.text}" for cause in dg.causes]
        return "\n".join(lines)


def check_batch(dump: Dump | str | Path | list, convention: str | None = None,
                rtol: float = RTOL, atol: float = ATOL) -> CheckResult:
    """Compare a dump's (or one step's rank files') loss and gradient with minichord's under `convention` (default:
    the dump's)."""
    d = dump if isinstance(dump, Dump) else load_dumps([dump] if isinstance(dump, (str, Path)) else dump)
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
            result.diagnoses.append(Diagnosis(rules, bug, changes))
        elif int((~tok_ok).sum()) < closest[0]:
            closest = (int((~tok_ok).sum()), changes)
    if not ok and not result.diagnoses and closest[1]:
        result.notes.append(f"closest variant: {', '.join(c.key for c in closest[1])} (still {closest[0]} of "
                            f"{len(theirs)} tokens differ): look for a mistake of another kind there")
    if not ok:
        result.matches = [n for n, c in CATALOGUE["convention"].items() if n != name and c.get("also") != name and
                          agrees(reference(d, convention_rules(n, d.weighting)), d.loss, theirs, rtol, atol)[0]]
    return result


def catalogue_lines() -> str:
    """`minichord check --list`: each convention and bug of minichord/catalogue.toml on one line, with its source."""
    conventions = [f"convention {n}{' (= ' + c['also'] + ')' if 'also' in c else ''}: {c['summary']} [{c['source']}]"
                   for n, c in CATALOGUE["convention"].items()]
    bugs = [f"bug {n}: {b['summary']} [{b['source']}]" + (f" (unclear: {b['unclear']})" if "unclear" in b else "")
            for n, b in CATALOGUE["bug"].items()]
    return "\n".join(conventions + bugs)
