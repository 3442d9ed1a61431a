"""Checkpoints: step directories of safetensors + JSON, published atomically, never unpickled.

    root/latest         names the newest complete step directory, e.g. "step-000040"
    root/step-000040/   config.json (format, version, step, meta, dtype, model_config, tokenizer special tokens,
                        optimizer param_groups, files: {name: sha256}), model.safetensors, tokenizer.json (+ a chat
                        model's tokenizer_config.json, generation_config.json), optimizer.safetensors (state.<i>.<name>)

Save: fsynced files in `root/.tmp-step-000040-<random>/`, renamed to `step-000040`, then `latest` replaced
(temp file + rename): a kill at any moment leaves `latest` naming a complete directory. Load checks every
field and file (types, ranges, sha256, names, no symlinks); a problem is one CheckpointError line."""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load as st_load, save as st_save

from minichord.config import ModelConfig, from_dict, to_dict
from minichord.tokenizer import Tokenizer, TokenizerError, TokenizerLike

FORMAT, VERSION, CONFIG, LATEST = "minichord-checkpoint", 2, "config.json", "latest"
MODEL, TOKENIZER, OPTIMIZER = "model.safetensors", "tokenizer.json", "optimizer.safetensors"
CHAT_FILES = ("tokenizer_config.json", "generation_config.json")  # a ChatTokenizer's, beside tokenizer.json
DTYPES, STEP_DIR = ("float32", "bfloat16", "float16"), re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    def __init__(self, message: str):  # always one line
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass
class Checkpoint:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: TokenizerLike | None
    optimizer_state: dict | None  # an optimizer.state_dict(), tensors on CPU
    step: int
    meta: dict
    path: Path | None = None  # the step directory


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _set_latest(root: Path, name: str) -> None:
    _write(root / ".tmp-latest", name.encode())
    os.replace(root / ".tmp-latest", root / LATEST)
    _fsync_dir(root)


def _files_of(model, tokenizer, optimizer, step: int, meta: dict) -> dict[str, bytes]:  # config.json (+ sha256s) last
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise CheckpointError(f"model weights must all be one of {', '.join(DTYPES)}, got {sorted(dtypes)}")
    config = {"format": FORMAT, "version": VERSION, "step": step, "meta": meta, "dtype": dtypes.pop(),
              "model_config": to_dict(model.cfg)}
    files = {MODEL: st_save(weights)}
    if tokenizer is not None:
        config["tokenizer_special_tokens"] = tokenizer.special_tokens
        files.update({n: t.encode() for n, t in tokenizer.files().items() if n in (TOKENIZER, *CHAT_FILES)})
    if optimizer is not None:  # AdamW-like: {param index: {name: tensor or number}}, JSON param_groups
        state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        if any(type(i) is not int for i in state["state"]):
            raise TypeError("the optimizer's state keys must be parameter indices")
        files[OPTIMIZER] = st_save({f"state.{i}.{k}": v.detach().cpu().contiguous()
                                    for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)})
        numbers = {i: {k: v for k, v in s.items() if not torch.is_tensor(v)} for i, s in state["state"].items()}
        config["optimizer"] = {"param_groups": state["param_groups"], "state": numbers}
    config["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files[CONFIG] = json.dumps(config, indent=1).encode()
    return files


def save_checkpoint(root, model, *, tokenizer: TokenizerLike | None = None, optimizer=None, step: int = 0,
                    meta: dict | None = None, keep: int = 3) -> Path:
    """Save as `root/step-<step>`, point `root/latest` at it, keep the last `keep` steps; returns the step dir.
    optimizer: an optimizer or its state_dict() (a sharded one's, gathered: distributed.gathered)."""
    root, meta = Path(root), {} if meta is None else meta
    if root.exists() and not (root.is_dir() and all(re.fullmatch(r"latest|\.tmp-.*|step-\d+", p.name)
                                                    for p in root.iterdir())):
        raise CheckpointError(f"refusing to save into {root}: it is not a directory of checkpoints")
    if not isinstance(getattr(model, "cfg", None), ModelConfig) or type(step) is not int or step < 0 \
            or type(keep) is not int or keep < 1 or not isinstance(meta, dict):
        raise CheckpointError(f"need a model with a .cfg ModelConfig, step >= 0 and keep >= 1 (got {step=}, "
                              f"{keep=}); meta must be a dict")
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise CheckpointError(f"vocab_size: tokenizer has {tokenizer.vocab_size}, model has {model.cfg.vocab_size}")
    try:  # non-JSON meta or optimizer values, and tensors sharing memory, are refused (never pickled)
        files = _files_of(model, tokenizer, optimizer, step, meta)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot save a checkpoint without pickle: {e}") from None

    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex}"  # a failed write leaves it to the next save's clean-up
    tmp.mkdir(parents=True)
    for name, data in files.items():
        _write(tmp / name, data)
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step: `latest` names the complete temp dir while a hard-linked copy moves in
        _set_latest(root, tmp.name)
        shutil.rmtree(final)
        tmp = shutil.copytree(tmp, root / f".tmp-link-{uuid.uuid4().hex}", copy_function=os.link)
    os.replace(tmp, final)
    _fsync_dir(root)
    _set_latest(root, final.name)
    steps = {p: int(m[1]) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name))}
    kept = {p for _, p in sorted((n, p) for p, n in steps.items() if n <= step)[-keep:]} | {  # the last `keep`,
        p for p, n in steps.items() if n > step}  # and every newer step (a run restarted below them never prunes them)
    for p in set(root.iterdir()) - {final, root / LATEST, *kept}:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()  # older steps, interrupted saves' temps
    return final


def _newest_step(root: Path) -> Path | None:  # the newest complete step directory (a save renames it in complete)
    return max([(int(m[1]), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()
                and not p.is_symlink() and (p / CONFIG).is_file()] if root.is_dir() else [], default=(0, None))[1]


def checkpoint_exists(path) -> bool:  # a root with a `latest` (even a broken one) or a step, or a step directory
    return os.path.lexists((p := Path(path)) / LATEST) or (p / CONFIG).is_file() or _newest_step(p) is not None


def _check(ok: object, where: Path, field: str, allowed: str, value: object) -> None:
    if not ok:
        raise CheckpointError(f"{where}: field {field!r} must be {allowed}, got {value!r:.300}")


def _read(d: Path, name: str, kind: str = "", sha: str | None = None) -> object:  # never through a symlink
    try:
        with open(os.open(d / name, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a symlink: "too many levels"
            data = f.read()
        if sha is not None and hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"its sha256 differs from the one in {CONFIG}")
        obj = json.loads(data) if kind == "json" else st_load(data) if kind == "safetensors" else data.decode()
    except Exception as e:  # OSError, UnicodeError, bad JSON (ValueError, RecursionError), safetensors' errors
        why = "missing" if isinstance(e, FileNotFoundError) else "unreadable or corrupt"
        raise CheckpointError(f"{d / name}: {why}: {getattr(e, 'strerror', None) or e}") from None
    _check(kind != "json" or isinstance(obj, dict), d / name, "(top level)", "a JSON object", obj)
    return obj


def _step_dir(d: Path) -> Path:  # a step directory as given, or the one a root's `latest` names
    if not d.is_dir():
        raise CheckpointError(f"checkpoint not found: {d} is missing or not a directory")
    if (d / CONFIG).is_file() and not os.path.lexists(d / LATEST):
        return d
    if not os.path.lexists(d / LATEST) and (newest := _newest_step(d)):  # a kill before the first `latest`, or a hand
        print(f"{d}: no `latest`; using the newest complete step directory, {newest.name}", file=sys.stderr)
        return newest
    name = _read(d, LATEST).strip()  # a loop, dangling or garbage: refused (one line), never "no checkpoint"
    ok = re.fullmatch(r"(\.tmp-)?step-\d+(-[0-9a-f]+)?", name) and (d / name).is_dir() and not (d / name).is_symlink()
    _check(ok, d / LATEST, "(content)", f"a step directory in {d}", name)
    return d / name


def _check_config(d: Path, c: dict) -> None:  # every field of config.json: (field, is it fine, what is allowed)
    files, raw, m = c.get("files"), c.get("model_config"), STEP_DIR.fullmatch(d.name)
    listed, ours = set(files) if isinstance(files, dict) else set(), {MODEL, TOKENIZER, OPTIMIZER, *CHAT_FILES}
    # names outside our three files, or one of ours on disk but not listed: nothing else is ever read
    odd = sorted(n for n in listed | ours if n in listed - ours or (n in ours - listed and os.path.lexists(d / n)))
    specials = c.get("tokenizer_special_tokens")
    rules = [
        ("format", c.get("format") == FORMAT, repr(FORMAT)),
        ("version", type(c.get("version")) is int and c["version"] == VERSION, str(VERSION)),
        ("step", type(c.get("step")) is int and c["step"] >= 0 and (not m or int(m[1]) == c["step"]),
         "an int >= 0" + (f", {int(m[1])} as in the directory name" if m else "")),
        ("meta", isinstance(c.get("meta"), dict), "an object"),
        ("dtype", c.get("dtype") in DTYPES, " or ".join(DTYPES)),
        ("files", isinstance(files, dict) and all(isinstance(v, str) for v in files.values()) and not odd
         and MODEL in listed and (TOKENIZER in listed or not listed & set(CHAT_FILES)),
         f"{{name: sha256}} of {MODEL}, and {TOKENIZER} (+ {', '.join(CHAT_FILES)}) and {OPTIMIZER} if present"),
        ("model_config", isinstance(raw, dict) and {f.name for f in dataclasses.fields(ModelConfig)} <= set(raw)
         and all(type(v) is bool or (type(v) in (int, float) and 0 < v < math.inf) for v in raw.values()),
         "a table of every ModelConfig field, each true, false or a positive finite number"),
        ("tokenizer_special_tokens", isinstance(specials, dict) and all(isinstance(v, str) for v in specials.values())
         if TOKENIZER in listed else specials is None, "{role: token text}, with tokenizer.json only"),
        ("optimizer", isinstance(c.get("optimizer"), dict) if OPTIMIZER in listed else c.get("optimizer") is None,
         f"an object with {OPTIMIZER}")]
    for field, ok, allowed in rules:
        _check(ok, d / CONFIG, field, allowed, odd or files if field == "files" else c.get(field))


def _load_model(d: Path, c: dict, cfg: ModelConfig) -> torch.nn.Module:
    from minichord.model import Transformer  # here, so checkpoint.py imports without model.py
    weights = _read(d, MODEL, "safetensors", c["files"][MODEL])
    if bad := [k for k, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]:
        raise CheckpointError(f"{d / MODEL}: {bad[0]} is not finite (NaN or inf in {len(bad)} tensor(s))")
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()})
    _check(stored == [c["dtype"]], d / CONFIG, "dtype", f"the dtype of the weights in {MODEL}, {stored}", c["dtype"])
    _check(cfg.n_layers <= len(weights), d / CONFIG, "model_config.n_layers", f"<= the {len(weights)} tensors",
           cfg.n_layers)  # before building: 10^9 layers would never finish
    try:
        with torch.device("meta"):  # no memory yet: the loaded tensors become the parameters
            model = Transformer(cfg)
        model.load_state_dict(weights, strict=True, assign=True)
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # missing/unexpected names, shapes
        raise CheckpointError(f"{d / MODEL}: does not fit model_config: {e}") from None
    return model


def _load_tokenizer(d: Path, c: dict, cfg: ModelConfig) -> TokenizerLike:
    from minichord.chat import ChatTokenizer
    texts = {name: _read(d, name, "", sha) for name, sha in c["files"].items() if name in (TOKENIZER, *CHAT_FILES)}
    try:
        tokenizer = ChatTokenizer(texts, str(d)) if CHAT_FILES[0] in texts else \
            Tokenizer.from_json(texts[TOKENIZER], c["tokenizer_special_tokens"], str(d / TOKENIZER))
    except TokenizerError as e:
        raise CheckpointError(f"{d / TOKENIZER} with the tokenizer_special_tokens in {d / CONFIG}: {e}") from None
    ids = {"pad id": tokenizer.pad_id, "stop ids": max(tokenizer.stop_ids), "last id": tokenizer.vocab_size - 1}
    _check(max(ids.values()) < cfg.vocab_size, d / TOKENIZER, "ids", f"< model vocab_size {cfg.vocab_size}", ids)
    return tokenizer


def _load_optimizer_state(d: Path, c: dict) -> dict:
    try:  # JSON made betas a list: AdamW takes that as it is
        opt = c["optimizer"]
        state = {"state": {int(i): dict(s) for i, s in opt["state"].items()},
                 "param_groups": [dict(g) for g in opt["param_groups"]]}
        for key, tensor in _read(d, OPTIMIZER, "safetensors", c["files"][OPTIMIZER]).items():
            _, i, name = key.split(".", 2)
            state["state"].setdefault(int(i), {})[name] = tensor
        for g in state["param_groups"]:  # AdamW's settings by meaning, then every parameter's state complete
            _check(all(type(g.get(k)) in (int, float) and 0 <= g[k] < math.inf for k in ("lr", "eps", "weight_decay"))
                   and len(g["betas"]) == 2 and all(type(b) in (int, float) and 0 <= b < 1 for b in g["betas"]),
                   d / CONFIG, "optimizer.param_groups", "lr, eps, weight_decay numbers >= 0; betas two in [0, 1)", g)
        for i, s in state["state"].items():
            _check({"step", "exp_avg", "exp_avg_sq"} <= set(s), d / OPTIMIZER, f"state.{i}", "AdamW's state", sorted(s))
        return state
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{d / CONFIG}: field 'optimizer' (state, param_groups) or {OPTIMIZER}: {e!r}") from None


def load_checkpoint(path, *, device="cpu", expect_config: ModelConfig | None = None) -> Checkpoint:
    """Read a checkpoint root (follows `latest`) or a step directory; a field unlike expect_config names both values."""
    d = _step_dir(Path(path))
    c = _read(d, CONFIG, "json")
    _check_config(d, c)
    try:
        cfg = from_dict(ModelConfig, c["model_config"], where=f"{d / CONFIG}: field model_config")
    except (ValueError, TypeError, ArithmeticError) as e:  # a ConfigError, or what its checks let through
        raise CheckpointError(str(e)) from None
    problems = [f"{k}: checkpoint has {getattr(cfg, k)}, expected {w}"
                for k, w in (to_dict(expect_config) if expect_config else {}).items() if w != getattr(cfg, k)]
    if problems:
        raise CheckpointError(f"checkpoint {d} does not match: " + "; ".join(problems))
    return Checkpoint(model=_load_model(d, c, cfg).to(device), model_config=cfg,
                      tokenizer=_load_tokenizer(d, c, cfg) if TOKENIZER in c["files"] else None,
                      optimizer_state=_load_optimizer_state(d, c) if OPTIMIZER in c["files"] else None,
                      step=c["step"], meta=c["meta"], path=d)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:  # over the loaded model
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state")
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state in {ckpt.path} does not fit this optimizer: {e}") from None


class LogError(ValueError):
    """A log file that cannot be cut back (the trainer raises it as a TrainingError)."""


def cut_log(file: Path, before: int, keep_step: int | None, log: Callable[[str], None]) -> None:
    """A resumed run's log cut to the rows with step < before (and == keep_step); a torn last line is dropped."""
    if not file.exists():
        return
    rows, lines = [], file.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if n < len(lines):
                raise LogError(f"{file}:{n}: not a metrics row; move the file away to resume") from None
            log(f"{file}:{n}: dropped a torn last line (the run was killed while writing it)")
            continue
        if step < before or step == keep_step:
            rows.append(line)
    file.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def progress_line(m: dict, steps: int, eta: float) -> str:
    parts = [f"step {m['step'] + 1:4d}/{steps}", m["method"], "mu joint" if m["mu"] is None else f"mu {m['mu']:.2f}"]
    for k, label in [("reward", "reward"), ("entropy", "H"), ("response_length", "len"),
                     ("clip_fraction", "clip"), ("expert_nll", "expert nll")]:
        parts += [f"{label} {m[k]:.3f}"] if k in m and not (isinstance(m[k], float) and math.isnan(m[k])) else []
    return " | ".join([*parts, f"eta {eta:4.0f}s"])
