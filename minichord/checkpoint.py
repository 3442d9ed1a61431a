"""Checkpoints: step directories of safetensors + JSON, published atomically, read without pickle.

    root/latest                 the name of the newest complete step directory (one line)
    root/step-000040/
      config.json               format, version, step, meta, dtype, model_config, tokenizer special
                                tokens, and `files`: {name: sha256} of every other file
      model.safetensors         the model's state_dict
      tokenizer.json            optional (Hugging Face format)
      optimizer.safetensors     optional: the tensors of an AdamW-style optimizer.state_dict(),
      optimizer.json              named state.<param index>.<key>; param_groups + other values here

Save: write everything into `root/.tmp-step-000040-<pid>` (fsynced), rename it to `step-000040`,
then replace `latest` (temp file, fsync, os.replace), then delete older steps beyond `keep` and
stray temp entries. A kill at any moment leaves `latest` naming a complete directory. (Re-saving
an existing step first points `latest` at the complete temp dir, then swaps in a hard-linked copy.)
Load checks every field and every file's sha256; any problem is one CheckpointError line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load, save as st_save

from minichord.config import ModelConfig, from_dict, to_dict

FORMAT, VERSION, CONFIG, LATEST = "minichord-checkpoint", 2, "config.json", "latest"
MODEL, TOKENIZER, OPT_TENSORS, OPT_JSON = "model.safetensors", "tokenizer.json", "optimizer.safetensors", "optimizer.json"
KEYS = {"format", "version", "step", "meta", "dtype", "model_config", "files", "tokenizer_special_tokens"}
DTYPES = ("float32", "bfloat16", "float16")
STEP_DIR = re.compile(r"step-(\d+)")
LATEST_NAME = re.compile(r"(\.tmp-)?step-\d+(-\d+)?")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, or is missing, corrupt or not what was expected (one line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass
class Checkpoint:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: Any  # minichord.tokenizer.Tokenizer | None
    optimizer_state: dict | None  # an optimizer.state_dict(), tensors on CPU
    step: int
    meta: dict
    path: Path | None = None  # the step directory


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_plain(x) for x in v))


def _optimizer_files(optimizer) -> tuple[bytes, bytes]:
    """optimizer.state_dict() as (safetensors bytes, JSON bytes); anything else is refused."""
    sd, tensors, scalars = optimizer.state_dict(), {}, {}
    for i, values in sd["state"].items():
        for key, v in values.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{key}"] = v.detach().cpu().contiguous()
            elif _plain(v) and isinstance(i, int):
                scalars.setdefault(str(i), {})[key] = v
            else:
                raise CheckpointError(f"optimizer state[{i!r}][{key!r}]: cannot store a {type(v).__name__} without pickle")
    for group in sd["param_groups"]:
        bad = [k for k, v in group.items() if not _plain(v)]
        if bad:
            raise CheckpointError(f"optimizer param_groups: cannot store {bad} without pickle")
    return st_save(tensors), json.dumps({"param_groups": sd["param_groups"], "state": scalars}).encode()


def _ours(name: str) -> bool:
    return name == LATEST or name.startswith(".tmp-") or STEP_DIR.fullmatch(name) is not None


def _set_latest(root: Path, name: str) -> None:
    tmp = root / f".tmp-latest-{os.getpid()}"
    _write(tmp, name.encode() + b"\n")
    os.replace(tmp, root / LATEST)
    _fsync(root)


def save_checkpoint(root, model, *, tokenizer=None, optimizer=None, step: int = 0, meta: dict | None = None,
                    keep: int = 3) -> Path:
    """Save as `root/step-<step>` and point `root/latest` at it (see the module docstring)."""
    root, cfg, meta = Path(root), getattr(model, "cfg", None), {} if meta is None else meta
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError(f"model must have a .cfg ModelConfig, got {type(cfg).__name__}")
    if type(step) is not int or step < 0 or type(keep) is not int or keep < 1:
        raise CheckpointError(f"step must be an int >= 0 and keep an int >= 1, got step={step!r}, keep={keep!r}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"vocab_size: tokenizer has {tokenizer.vocab_size}, model has {cfg.vocab_size}")
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"checkpoint root exists and is not a directory: {root}")
    if root.is_dir() and not all(_ours(p.name) for p in root.iterdir()):
        raise CheckpointError(f"refusing to save into {root}: a non-empty directory that is not a checkpoint root")
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise CheckpointError(f"model weights must all be one of {', '.join(DTYPES)}, got {sorted(dtypes)}")
    try:
        config = {"format": FORMAT, "version": VERSION, "step": step, "meta": json.loads(json.dumps(meta)),
                  "dtype": dtypes.pop(), "model_config": to_dict(cfg)}
        blobs = {MODEL: st_save(weights)}
    except (TypeError, ValueError, RuntimeError) as e:  # meta not JSON; tensors sharing memory
        raise CheckpointError(f"cannot save checkpoint: {e}") from None
    if not isinstance(config["meta"], dict):
        raise CheckpointError(f"meta must be a dict, got {type(meta).__name__}")
    if tokenizer is not None:
        blobs[TOKENIZER] = tokenizer.to_json().encode()
        config["tokenizer_special_tokens"] = tokenizer.special_tokens
    if optimizer is not None:
        blobs[OPT_TENSORS], blobs[OPT_JSON] = _optimizer_files(optimizer)

    name = f"step-{step:06d}"
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp-{name}-{os.getpid()}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config["files"] = {file: _write(tmp / file, data) for file, data in blobs.items()}
        _write(tmp / CONFIG, json.dumps(config, indent=1).encode())
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving a step: `latest` names the complete temp dir while the old one goes
        _set_latest(root, tmp.name)
        shutil.rmtree(final)
        linked = root / f".tmp-link-{name}-{os.getpid()}"
        shutil.copytree(tmp, linked, copy_function=os.link)
        _fsync(linked)
        tmp = linked
    os.replace(tmp, final)
    _fsync(root)
    _set_latest(root, name)
    older = sorted((int(m[1]), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name)) and int(m[1]) < step)
    kept = {p for _, p in older[len(older) - keep + 1:]} if keep > 1 else set()
    for p in root.iterdir():  # older steps beyond `keep`, stray temp entries, steps of an abandoned run
        if p != final and p.name != LATEST and p not in kept:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return final


# ---- load ---------------------------------------------------------------------------------------

def checkpoint_exists(path) -> bool:
    """True if `path` is a checkpoint root with a `latest` pointer, or a step directory."""
    return (Path(path) / LATEST).is_file() or (Path(path) / CONFIG).is_file()


def _read(d: Path, name: str) -> bytes:
    p = d / name
    if p.is_symlink():
        raise CheckpointError(f"{p}: is a symlink; a checkpoint holds plain files only")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read: {e.strerror or e}") from None


def _step_dir(path: Path) -> Path:
    if (path / CONFIG).is_file() and not (path / LATEST).exists():
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        name = _read(path, LATEST).decode().strip()
    except UnicodeDecodeError:
        name = "(not text)"
    if not LATEST_NAME.fullmatch(name):
        raise CheckpointError(f"{path / LATEST}: {name[:80]!r} is not a step directory name such as 'step-000040'")
    if (path / name).is_symlink() or not (path / name).is_dir():
        raise CheckpointError(f"{path / LATEST}: names {name}, which is not a directory in {path}")
    return path / name


def _parse_json(d: Path, name: str, data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{d / name}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{d / name}: must hold a JSON object, got {type(obj).__name__}")
    return obj


def _check(ok: bool, where: Path, field: str, allowed: str, value: Any) -> None:
    if not ok:
        raise CheckpointError(f"{where}: field {field!r} must be {allowed}, got {value!r:.80}")


def _model_config(where: Path, raw: Any) -> ModelConfig:
    _check(isinstance(raw, dict), where, "model_config", "a table of ModelConfig fields", raw)
    try:
        cfg = from_dict(ModelConfig, raw, where=f"{where} model_config")
    except (ValueError, TypeError, ArithmeticError) as e:  # ConfigError, or n_heads=0 dividing
        raise CheckpointError(f"{where}: field 'model_config': {e}") from None
    for k, v in to_dict(cfg).items():
        _check(isinstance(v, bool) or 0 < v < math.inf, where, f"model_config.{k}", "a positive finite number", v)
    return cfg


def _tensors(p: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        raise CheckpointError(f"{p}: not a valid safetensors file: {e}") from None


def load_checkpoint(path, *, device="cpu", expect_config: ModelConfig | None = None,
                    expect_vocab_size: int | None = None) -> Checkpoint:
    """Read a checkpoint root (follows `latest`) or a step directory, checking every field and file."""
    from minichord.model import Transformer  # here, so checkpoint.py imports without model.py
    from minichord.tokenizer import SPECIAL_ROLES, Tokenizer, TokenizerError

    d = _step_dir(Path(path))
    where, c = d / CONFIG, _parse_json(d, CONFIG, _read(d, CONFIG))
    _check(c.get("format") == FORMAT and c.get("version") == VERSION and type(c.get("version")) is int, where,
           "format/version", f"{FORMAT!r} version {VERSION}", (c.get("format"), c.get("version")))
    _check(set(c) <= KEYS, where, "keys", f"among {sorted(KEYS)}", sorted(set(c) - KEYS))
    step, m = c.get("step"), STEP_DIR.fullmatch(d.name)
    _check(type(step) is int and step >= 0 and (not m or int(m[1]) == step), where, "step",
           f"an int >= 0{f' equal to {int(m[1])} (the directory name)' if m else ''}", step)
    _check(isinstance(c.get("meta"), dict), where, "meta", "an object", c.get("meta"))
    _check(c.get("dtype") in DTYPES, where, "dtype", " or ".join(DTYPES), c.get("dtype"))
    files, known = c.get("files"), (MODEL, TOKENIZER, OPT_TENSORS, OPT_JSON)
    _check(isinstance(files, dict) and MODEL in files and set(files) <= set(known)
           and all(isinstance(v, str) for v in files.values()), where, "files",
           f"a table {{name: sha256}} of {', '.join(known)} with {MODEL}", files)
    for name in known:
        _check(name in files or not os.path.lexists(d / name), where, "files", f"a table listing {name}", files)
    _check((OPT_TENSORS in files) == (OPT_JSON in files), where, "files", f"listing both {OPT_TENSORS} and {OPT_JSON}", files)
    specials = c.get("tokenizer_special_tokens")
    _check(specials is None or isinstance(specials, dict) and all(isinstance(v, str) for v in specials.values()),
           where, "tokenizer_special_tokens", "an object {role: token text}", specials)
    cfg = _model_config(where, c.get("model_config"))
    problems = []
    if expect_config is not None:
        have, want = to_dict(cfg), to_dict(expect_config)
        problems = [f"{k}: checkpoint has {have[k]}, expected {want[k]}" for k in have if have[k] != want[k]]
    if expect_vocab_size is not None and cfg.vocab_size != expect_vocab_size:
        problems.append(f"vocab_size: checkpoint has {cfg.vocab_size}, expected {expect_vocab_size}")
    if problems:
        raise CheckpointError(f"checkpoint {d} does not match: " + "; ".join(dict.fromkeys(problems)))
    blobs = {name: _read(d, name) for name in files}
    for name, data in blobs.items():
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise CheckpointError(f"{d / name}: corrupt: its sha256 differs from the one in {where}")

    weights = _tensors(d / MODEL, blobs[MODEL])
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()})
    _check(stored == [c["dtype"]], where, "dtype", f"the dtype of the weights in {MODEL}, {stored}", c["dtype"])
    _check(cfg.n_layers <= len(weights), where, "model_config.n_layers", f"<= the {len(weights)} tensors", cfg.n_layers)
    try:
        with torch.device("meta"):
            model = Transformer(cfg)
    except (RuntimeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: field 'model_config' does not build a model: {e}") from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
        raise CheckpointError(f"{d / MODEL}: does not fit model_config ({len(diff)} tensors differ), e.g. "
                              f"{diff[0]}: file has {have.get(diff[0])}, model_config needs {want.get(diff[0])}")
    model.load_state_dict(weights, strict=True, assign=True)
    model.to(device)

    tokenizer = None
    if TOKENIZER in files:
        try:
            tokenizer = Tokenizer.from_json(blobs[TOKENIZER].decode(), specials, source=str(d / TOKENIZER))
        except (TokenizerError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{d / TOKENIZER}: {e}") from None
        bad = [f"{r} id {getattr(tokenizer, f'{r}_id')} >= model vocab_size {cfg.vocab_size}" for r in SPECIAL_ROLES
               if getattr(tokenizer, f"{r}_id") >= cfg.vocab_size]
        if tokenizer.vocab_size > cfg.vocab_size or bad:
            raise CheckpointError(f"{d / TOKENIZER}: does not fit the model: " + "; ".join(
                bad or [f"vocab size {tokenizer.vocab_size} > model vocab_size {cfg.vocab_size}"]))

    optimizer_state = None
    if OPT_JSON in files:
        j, p = _parse_json(d, OPT_JSON, blobs[OPT_JSON]), d / OPT_JSON
        groups, scalars = j.get("param_groups"), j.get("state")
        _check(isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                for g in groups), p, "param_groups", "a list of {params: [...]}", groups)
        _check(isinstance(scalars, dict) and all(re.fullmatch("[0-9]{1,9}", k) and isinstance(v, dict)
                                                 for k, v in scalars.items()), p, "state", "{index: {...}}", scalars)
        state = {int(k): dict(v) for k, v in scalars.items()}
        for key, t in _tensors(d / OPT_TENSORS, blobs[OPT_TENSORS]).items():
            m = re.fullmatch(r"state\.([0-9]{1,9})\.(.+)", key)
            _check(m is not None, d / OPT_TENSORS, "tensor name", "state.<index>.<name>", key)
            state.setdefault(int(m[1]), {})[m[2]] = t
        optimizer_state = {"state": state, "param_groups": [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in groups]}
    return Checkpoint(model=model, model_config=cfg, tokenizer=tokenizer, optimizer_state=optimizer_state,
                      step=step, meta=c["meta"], path=d)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the saved optimizer state into `optimizer` (built over the loaded model's parameters)."""
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state")
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state in {ckpt.path} does not fit this optimizer: {e}") from None
    for p, values in optimizer.state.items():
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                raise CheckpointError(f"optimizer state in {ckpt.path}: {k} has shape {tuple(v.shape)}, "
                                      f"its parameter {tuple(p.shape)}")
