"""Checkpoints: a directory of safetensors + JSON files, written atomically, read without pickle.

    ckpt_dir/
      config.json           format tag, model config, step, meta, dtype, tied-weight aliases,
                            and a manifest {file: [size, sha256]} of every other file
      model.safetensors     model weights (a tensor shared by two names is stored once)
      tokenizer.json        optional, Hugging Face format
      optimizer.safetensors optional: every tensor of optimizer.state_dict() ...
      optimizer.json        ... and the rest of it (param_groups, Python-number step counters)
      rng.safetensors       torch CPU (and CUDA) generator states ...
      rng.json              ... and Python `random` / numpy states

Nothing is ever unpickled: tensors come from safetensors, everything else is JSON. Non-JSON
values (tuples, int dict keys, tensors inside a state dict) are written as small tagged JSON
objects ({"__tuple__": [...]}, {"__int_keys__": {...}}, {"__tensor__": "name"}).

Atomic save (a crash at any instant leaves a complete checkpoint at `path` or at the backup):
  1. write every file into a temporary sibling `.NAME.tmp-<pid>-<random>`, fsync each file,
     config.json (with the manifest) last, then fsync the directory;
  2. if `path` exists, rename it to the backup sibling `.NAME.old` (stale backup removed first);
  3. rename the temporary directory to `path`; fsync the parent directory;
  4. delete the backup.
A crash during 1 leaves the old `path` untouched (the stray temp dir is cleared next save);
between 2 and 3 `path` is missing but `.NAME.old` is complete, and `load_checkpoint` puts it
back; after 3 `path` is the new checkpoint. Renames within one directory are atomic on POSIX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from minichord.config import ConfigError, ModelConfig, from_dict, to_dict

FORMAT = "minichord-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
OPTIM_TENSORS, OPTIM_JSON = "optimizer.safetensors", "optimizer.json"
RNG_TENSORS, RNG_JSON = "rng.safetensors", "rng.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, is missing or corrupt, or does not match what was expected."""


@dataclasses.dataclass
class Checkpoint:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: Any  # minichord.tokenizer.Tokenizer | None
    optimizer_state: dict | None  # an optimizer.state_dict(), tensors on CPU
    step: int
    meta: dict
    rng: dict | None  # {"torch": ByteTensor, "cuda": [ByteTensor], "python": state, "numpy": state}
    path: Path | None = None


# ---- JSON with tensors, tuples and int keys (never pickle) -------------------------------------

def _encode_tree(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `obj`; tensors move into `tensors` under `name` and leave a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode_tree(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode_tree(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        encoded = {str(k): _encode_tree(v, f"{name}.{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, str) for k in obj):
            return encoded
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__int_keys__": encoded}
        raise CheckpointError(f"{name}: dict keys must be all str or all int, got {list(obj)[:5]}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"{name}: cannot store a {type(obj).__name__} without pickle: {obj!r:.80}")


def _decode_tree(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode_tree(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"{where}: tensor {obj['__tensor__']!r} is missing from its safetensors file")
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode_tree(v, tensors, where) for v in obj["__tuple__"])
    if "__int_keys__" in obj:
        return {int(k): _decode_tree(v, tensors, where) for k, v in obj["__int_keys__"].items()}
    return {k: _decode_tree(v, tensors, where) for k, v in obj.items()}


# ---- files --------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path))
    _fsync_file(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None


def _read_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for bad headers / sizes
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses two names for one storage: keep the first name of each identical
    view and return {alias: kept name}; tensors that merely overlap are copied."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen[key] = name
        copy = ptr in storages or not t.is_contiguous()
        kept[name] = t.cpu().clone(memory_format=torch.contiguous_format) if copy else t.cpu()
        storages.add(ptr)
    return kept, aliases


def _backup_of(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _is_complete(path: Path) -> bool:
    """A directory whose config.json is ours and whose manifest files all exist with their size."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return config.get("format") == FORMAT and all(
            (path / f).is_file() and (path / f).stat().st_size == size
            for f, (size, _) in config["manifest"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ---- save -------------------------------------------------------------------------------------

def save_checkpoint(path, model, *, tokenizer=None, optimizer=None, step: int = 0,
                    meta: dict | None = None, save_rng: bool = True) -> Path:
    """Write `model` (with `.cfg`), and optionally the tokenizer, optimizer and RNG states, to the
    directory `path`, atomically (see the module docstring). Returns `path`."""
    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper -> the module itself
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint path exists and is not a directory: {path}")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"refusing to replace {path}: it is a non-empty directory that is not a checkpoint")
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError(f"model must have a .cfg ModelConfig, got {type(cfg).__name__}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"vocab_size: tokenizer has {tokenizer.vocab_size}, model has {cfg.vocab_size}")
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"meta must be JSON-serialisable: {e}") from None

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by an earlier crash
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_checkpoint_files(tmp, model, cfg, tokenizer, optimizer, int(step), meta, save_rng)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_checkpoint_files(tmp: Path, model, cfg: ModelConfig, tokenizer, optimizer, step: int,
                            meta: dict, save_rng: bool) -> None:
    weights, aliases = _dedupe_shared(model.state_dict())
    float_dtypes = {str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()}
    _write_tensors(tmp / MODEL_FILE, weights)
    config: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "model_config": to_dict(cfg), "step": step,
        "meta": meta, "dtype": float_dtypes.pop() if len(float_dtypes) == 1 else None,
        "tied_aliases": aliases,
    }
    if tokenizer is not None:
        (tmp / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
        _fsync_file(tmp / TOKENIZER_FILE)
        config["tokenizer_special_tokens"] = tokenizer.special_tokens
    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        tree = _encode_tree(optimizer.state_dict(), "optimizer", tensors)
        _write_tensors(tmp / OPTIM_TENSORS, tensors)
        _write_json(tmp / OPTIM_JSON, tree)
    if save_rng:
        tensors = {}
        tree = _encode_tree(_capture_rng(), "rng", tensors)
        _write_tensors(tmp / RNG_TENSORS, tensors)
        _write_json(tmp / RNG_JSON, tree)
    # config.json last: it carries the manifest, so a directory with a valid one is complete.
    config["manifest"] = {f.name: [f.stat().st_size, _sha256(f)] for f in sorted(tmp.iterdir())}
    _write_json(tmp / CONFIG_FILE, config)
    _fsync_dir(tmp)


def _swap_into_place(tmp: Path, path: Path) -> None:
    backup = _backup_of(path)
    if path.exists():
        if backup.exists():
            shutil.rmtree(backup)  # stale: `path` is complete, so this copy is not needed
        os.replace(path, backup)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if backup.exists():
        shutil.rmtree(backup)
        _fsync_dir(path.parent)


def _capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


# ---- load -------------------------------------------------------------------------------------

def _recover(path: Path) -> None:
    """If a save was interrupted between its two renames, put the complete backup back."""
    backup = _backup_of(path)
    if not path.exists() and backup.is_dir() and _is_complete(backup):
        os.replace(backup, path)
        _fsync_dir(path.parent)


def checkpoint_exists(path) -> bool:
    """True if `path` holds a checkpoint (after recovering one from an interrupted save)."""
    path = Path(path)
    _recover(path)
    return (path / CONFIG_FILE).is_file()


def _check_manifest(path: Path, config: dict) -> None:
    for name, (size, digest) in config.get("manifest", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"missing checkpoint file: {file}")
        if file.stat().st_size != size or _sha256(file) != digest:
            raise CheckpointError(f"corrupt checkpoint file {file}: size or sha256 differs from {path / CONFIG_FILE}")


def _check_expected(cfg: ModelConfig, expect_config: ModelConfig | None, expect_vocab_size: int | None) -> None:
    problems = []
    if expect_config is not None:
        have, want = to_dict(cfg), to_dict(expect_config)
        problems += [f"{k}: checkpoint has {have.get(k)}, expected {want.get(k)}"
                     for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if expect_vocab_size is not None and cfg.vocab_size != expect_vocab_size:
        problems.append(f"vocab_size: checkpoint has {cfg.vocab_size}, expected {expect_vocab_size}")
    if problems:
        raise CheckpointError("checkpoint does not match: " + "; ".join(dict.fromkeys(problems)))


def load_checkpoint(path, *, device="cpu", expect_config: ModelConfig | None = None,
                    expect_vocab_size: int | None = None, verify: bool = True) -> Checkpoint:
    """Read a checkpoint directory (safetensors + JSON only). `verify` checks every file's sha256
    against the manifest. Mismatches with `expect_*` raise CheckpointError naming both values."""
    from minichord.model import Transformer  # here, so checkpoint.py imports without model.py
    from minichord.tokenizer import Tokenizer, TokenizerError

    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    config = _read_json(path / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"corrupt checkpoint file {path / CONFIG_FILE}: not a {FORMAT} config")
    if config.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / CONFIG_FILE}: format version {config.get('version')}, expected {FORMAT_VERSION}")
    if verify:
        _check_manifest(path, config)
    try:
        cfg = from_dict(ModelConfig, config["model_config"], where=str(path / CONFIG_FILE))
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path / CONFIG_FILE}: {e}") from None
    _check_expected(cfg, expect_config, expect_vocab_size)

    weights = _read_tensors(path / MODEL_FILE)
    for alias, name in config.get("tied_aliases", {}).items():
        weights[alias] = weights[name]
    model = Transformer(cfg)
    if config.get("dtype"):
        model.to(getattr(torch, config["dtype"]))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        raise CheckpointError(f"{path / MODEL_FILE} does not fit Transformer({cfg}): {e}") from None
    model.to(device)

    tokenizer = None
    if (path / TOKENIZER_FILE).exists():
        try:
            tokenizer = Tokenizer.load(path / TOKENIZER_FILE, config.get("tokenizer_special_tokens"))
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"vocab_size: tokenizer has {tokenizer.vocab_size}, model has {cfg.vocab_size}")

    optimizer_state = rng = None
    if (path / OPTIM_JSON).exists() or (path / OPTIM_TENSORS).exists():
        tensors = _read_tensors(path / OPTIM_TENSORS)
        optimizer_state = _decode_tree(_read_json(path / OPTIM_JSON), tensors, str(path / OPTIM_JSON))
    if (path / RNG_JSON).exists() or (path / RNG_TENSORS).exists():
        tensors = _read_tensors(path / RNG_TENSORS)
        rng = _decode_tree(_read_json(path / RNG_JSON), tensors, str(path / RNG_JSON))
    return Checkpoint(model=model, model_config=cfg, tokenizer=tokenizer, optimizer_state=optimizer_state,
                      step=int(config.get("step", 0)), meta=config.get("meta", {}), rng=rng, path=path)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the saved optimizer state into `optimizer` (built over the loaded model's parameters)."""
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state")
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state in {ckpt.path} does not fit this optimizer: {e}") from None


def restore_rng(ckpt: Checkpoint) -> None:
    """Set torch (CPU, and CUDA when saved and present), Python `random` and numpy generators."""
    if ckpt.rng is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no RNG state")
    torch.set_rng_state(ckpt.rng["torch"])
    random.setstate(ckpt.rng["python"])
    np.random.set_state(ckpt.rng["numpy"])
    if "cuda" in ckpt.rng and torch.cuda.is_available():
        cuda_states = ckpt.rng["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
