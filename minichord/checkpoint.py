"""Checkpoints: step directories of safetensors + JSON, published atomically, never unpickled.

`root/latest` names the newest complete step directory, e.g. `root/step-000040/`: model.safetensors, optional
tokenizer.json and optimizer.safetensors (AdamW-like state tensors as state.<param index>.<name>), config.json
(format, version, step, meta, dtype, model_config, tokenizer special tokens, optimizer param_groups and non-tensor
state, files {name: sha256}). Save writes `.tmp-step-000040-<random>`, renames it, replaces `latest`, deletes
steps beyond `keep` and stray temp entries, fsyncing each write first: a kill at any moment leaves a complete
`latest`. Load checks every field and file; any problem is one CheckpointError line."""

import dataclasses, hashlib, json, math, os, re, shutil, uuid  # noqa: E401
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save

from minichord.config import ModelConfig, from_dict, to_dict

FORMAT, VERSION, CONFIG, LATEST = "minichord-checkpoint", 2, "config.json", "latest"
MODEL, TOKENIZER, OPTIMIZER = "model.safetensors", "tokenizer.json", "optimizer.safetensors"
DTYPES, STEP_DIR, OURS = ("float32", "bfloat16", "float16"), re.compile(r"step-(\d+)"), r"latest|\.tmp-.*|step-\d+"


class CheckpointError(RuntimeError):
    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass
class Checkpoint:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: object  # minichord.tokenizer.Tokenizer | None
    optimizer_state: dict | None  # an optimizer.state_dict(), tensors on CPU
    step: int
    meta: dict
    path: Path | None = None  # the step directory


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd), os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


def _set_latest(root: Path, name: str) -> None:
    _write(root / ".tmp-latest", name.encode())
    os.replace(root / ".tmp-latest", root / LATEST)
    _fsync(root)


def save_checkpoint(root, model, *, tokenizer=None, optimizer=None, step: int = 0, meta: dict | None = None,
                    keep: int = 3) -> Path:
    """Save as `root/step-<step>`, point `root/latest` at it, keep the last `keep` steps; returns the step dir."""
    root, cfg, meta = Path(root), getattr(model, "cfg", None), {} if meta is None else meta
    if root.exists() and not (root.is_dir() and all(re.fullmatch(OURS, p.name) for p in root.iterdir())):
        raise CheckpointError(f"refusing to save into {root}: it is not a directory of checkpoints")
    if not isinstance(cfg, ModelConfig) or type(step) is not int or step < 0 or type(keep) is not int or keep < 1:
        raise CheckpointError(f"need a model with a .cfg ModelConfig, step >= 0 and keep >= 1, got {step=}, {keep=}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"vocab_size: tokenizer has {tokenizer.vocab_size}, model has {cfg.vocab_size}")
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise CheckpointError(f"model weights must all be one of {', '.join(DTYPES)}, got {sorted(dtypes)}")
    config, blobs = {"format": FORMAT, "version": VERSION, "step": step, "meta": meta, "dtype": dtypes.pop(),
                     "model_config": to_dict(cfg)}, {MODEL: weights}
    if tokenizer is not None:
        config["tokenizer_special_tokens"], blobs[TOKENIZER] = tokenizer.special_tokens, tokenizer.to_json().encode()
    if optimizer is not None:  # AdamW-like: {int: {name: tensor or number}}, param_groups of JSON values
        sd = optimizer.state_dict()
        blobs[OPTIMIZER] = {f"state.{i}.{k}": v.detach().cpu().contiguous()
                            for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
        config["optimizer"] = {"param_groups": sd["param_groups"], "state": {
            i: {k: v for k, v in s.items() if not torch.is_tensor(v)} for i, s in sd["state"].items()}}
    try:  # non-JSON meta or optimizer values, and tensors sharing memory, are refused here (never pickled)
        if not isinstance(meta, dict) or optimizer and any(type(i) is not int for i in sd["state"]):
            raise TypeError("meta must be a dict, and the optimizer's state keys parameter indices")
        blobs = {k: v if k == TOKENIZER else st_save(v) for k, v in blobs.items()}
        config["files"] = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
        blobs[CONFIG] = json.dumps(config, indent=1).encode()  # written last
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot save a checkpoint without pickle: {e}") from None

    final = root / f"step-{step:06d}"
    (tmp := root / f".tmp-{final.name}-{uuid.uuid4().hex}").mkdir(parents=True)  # a failed write leaves it to
    for name, data in blobs.items():  # the next save, which deletes stray temp entries
        _write(tmp / name, data)
    _fsync(tmp)
    if final.exists():  # re-saving a step: `latest` names the complete temp dir while a hard-linked copy moves in
        _set_latest(root, tmp.name)
        shutil.rmtree(final)
        tmp = shutil.copytree(tmp, root / f".tmp-link-{uuid.uuid4().hex}", copy_function=os.link)
    os.replace(tmp, final)
    _fsync(root)
    _set_latest(root, final.name)
    steps = sorted((int(m[1]), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name)) and int(m[1]) <= step)
    for p in set(root.iterdir()) - {final, root / LATEST, *(p for _, p in steps[-keep:])}:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()  # also steps of an abandoned run
    return final


def checkpoint_exists(path) -> bool:
    """True if `path` is a checkpoint root with a `latest` pointer, or a step directory."""
    return (Path(path) / LATEST).is_file() or (Path(path) / CONFIG).is_file()


def _check(ok: object, where: Path, field: str, allowed: str, value: object) -> None:
    if not ok:
        raise CheckpointError(f"{where}: field {field!r} must be {allowed}, got {value!r:.300}")


def _read(d: Path, name: str, kind: str = "", sha: str | None = None) -> object:
    try:
        with open(os.open(d / name, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a symlink: "too many levels of ..."
            data = f.read()
        if sha is not None and hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"its sha256 differs from the one in {CONFIG}")
        obj = json.loads(data) if kind == "json" else st_load(data) if kind == "safetensors" else data.decode()
    except Exception as e:  # OSError, UnicodeError, bad JSON (ValueError, RecursionError), safetensors' errors
        why = "missing" if isinstance(e, FileNotFoundError) else "unreadable or corrupt"
        raise CheckpointError(f"{d / name}: {why}: {getattr(e, 'strerror', None) or e}") from None
    _check(kind != "json" or isinstance(obj, dict), d / name, "(top level)", "a JSON object", obj)
    return obj


def load_checkpoint(path, *, device="cpu", expect_config: ModelConfig | None = None,
                    expect_vocab_size: int | None = None) -> Checkpoint:
    """Read a checkpoint root (follows `latest`) or a step directory, checking every field and file."""
    from minichord.model import Transformer  # here, so checkpoint.py imports without model.py
    from minichord.tokenizer import SPECIAL_ROLES, Tokenizer, TokenizerError

    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint not found: {d} is missing or not a directory")
    if not (d / CONFIG).is_file() or (d / LATEST).exists():  # a root: follow `latest`
        name = _read(d, LATEST).strip()
        _check(re.fullmatch(r"(\.tmp-)?step-\d+(-[0-9a-f]+)?", name) and (d / name).is_dir()
               and not (d / name).is_symlink(), d / LATEST, "(content)", f"a step directory in {d}", name)
        d = d / name
    where, c, m = d / CONFIG, _read(d, CONFIG, "json"), STEP_DIR.fullmatch(d.name)
    files, raw, opt, specials = (c.get(k) for k in ("files", "model_config", "optimizer", "tokenizer_special_tokens"))
    listed, ours = set(files) if isinstance(files, dict) else set(), {MODEL, TOKENIZER, OPTIMIZER}
    odd = sorted(n for n in listed | ours if n in listed - ours or n in ours - listed and os.path.lexists(d / n))
    for field, ok, allowed in [  # (field, is it fine, what is allowed); model_config before ModelConfig divides
        ("format", c.get("format") == FORMAT, repr(FORMAT)),
        ("version", type(c.get("version")) is int and c["version"] == VERSION, str(VERSION)),
        ("step", type(c.get("step")) is int and c["step"] >= 0 and (not m or int(m[1]) == c["step"]),
         "an int >= 0" + (f", {int(m[1])} as in the directory name" if m else "")),
        ("meta", isinstance(c.get("meta"), dict), "an object"),
        ("dtype", c.get("dtype") in DTYPES, " or ".join(DTYPES)),
        ("files", isinstance(files, dict) and all(isinstance(v, str) for v in files.values()) and not odd
         and MODEL in listed, f"{{name: sha256}} of {MODEL}, and {TOKENIZER} and {OPTIMIZER} if present"),
        ("model_config", isinstance(raw, dict) and {f.name for f in dataclasses.fields(ModelConfig)} <= set(raw)
         and all(type(v) is bool or type(v) in (int, float) and 0 < v < math.inf for v in raw.values()),
         "a table of every ModelConfig field, each true, false or a positive finite number"),
        ("tokenizer_special_tokens", isinstance(specials, dict) and all(isinstance(v, str) for v in specials.values())
         if TOKENIZER in listed else specials is None, "{role: token text}, with tokenizer.json only"),
        ("optimizer", isinstance(opt, dict) if OPTIMIZER in listed else opt is None, f"an object with {OPTIMIZER}")]:
        _check(ok, where, field, allowed, odd or files if field == "files" else c.get(field))
    try:
        cfg = from_dict(ModelConfig, raw, where=f"{where}: field model_config")
    except (ValueError, TypeError, ArithmeticError) as e:  # a ConfigError, or what its checks let through
        raise CheckpointError(str(e)) from None
    want = [*(to_dict(expect_config) if expect_config else {}).items(), ("vocab_size", expect_vocab_size)]
    if problems := [f"{k}: checkpoint has {getattr(cfg, k)}, expected {w}" for k, w in want
                    if w not in (None, getattr(cfg, k))]:
        raise CheckpointError(f"checkpoint {d} does not match: " + "; ".join(dict.fromkeys(problems)))

    weights = _read(d, MODEL, "safetensors", files[MODEL])
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()})
    _check(stored == [c["dtype"]], where, "dtype", f"the dtype of the weights in {MODEL}, {stored}", c["dtype"])
    _check(cfg.n_layers <= len(weights), where, "model_config.n_layers", f"<= the {len(weights)} tensors", cfg.n_layers)
    try:
        with torch.device("meta"):  # no memory yet: the loaded tensors become the parameters
            model = Transformer(cfg)
        model.load_state_dict(weights, strict=True, assign=True)
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # missing/unexpected names, shapes
        raise CheckpointError(f"{d / MODEL}: does not fit model_config: {e}") from None

    tokenizer = optimizer_state = None
    if TOKENIZER in files:
        try:
            tokenizer = Tokenizer.from_json(_read(d, TOKENIZER, "", files[TOKENIZER]), specials, str(d / TOKENIZER))
        except TokenizerError as e:
            raise CheckpointError(f"{d / TOKENIZER} with the tokenizer_special_tokens in {where}: {e}") from None
        ids = {f"{r} id": getattr(tokenizer, f"{r}_id") for r in SPECIAL_ROLES} | {"last id": tokenizer.vocab_size - 1}
        _check(max(ids.values()) < cfg.vocab_size, d / TOKENIZER, "ids", f"< model vocab_size {cfg.vocab_size}", ids)
    if OPTIMIZER in files:  # JSON made betas a list: AdamW takes that as it is
        try:
            optimizer_state = {"state": {int(i): dict(s) for i, s in opt["state"].items()},
                               "param_groups": [dict(g) for g in opt["param_groups"]]}
            for key, t in _read(d, OPTIMIZER, "safetensors", files[OPTIMIZER]).items():
                _, i, k = key.split(".", 2)
                optimizer_state["state"].setdefault(int(i), {})[k] = t
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{where}: field 'optimizer' (state, param_groups) or {OPTIMIZER}: {e!r}") from None
    return Checkpoint(model=model.to(device), model_config=cfg, tokenizer=tokenizer, optimizer_state=optimizer_state,
                      step=c["step"], meta=c["meta"], path=d)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the saved optimizer state into `optimizer` (built over the loaded model's parameters)."""
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state")
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state in {ckpt.path} does not fit this optimizer: {e}") from None
