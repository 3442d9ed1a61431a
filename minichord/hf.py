"""Hugging Face Qwen2 / Llama checkpoints <-> minichord's Transformer.

HF's tensor = "model." + minichord's name, except `lm_head.weight`; Qwen2 has q/k/v biases, Llama not. What minichord
does not compute (RoPE scaling, sliding windows, ...) is refused with one line, never approximated. Weights load
tensor by tensor in `dtype` into a meta-device model: a bf16 load never holds an fp32 copy."""

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minichord.checkpoint import load_checkpoint
from minichord.config import ConfigError, ModelConfig, optional_import
from minichord.model import Transformer
from minichord.tokenizer import TokenizerLike

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                   "special_tokens_map.json", "chat_template.jinja")
EXPORT_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES)  # all that an export writes
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")  # owner/name[@revision], as the Hub spells it
HUB_FILES = ["*.json", "*.safetensors", "*.jinja"]  # what load_model reads; no .bin, .gguf or .onnx
_MISSING = object()


class HFError(ValueError):
    """A Hugging Face directory minichord cannot load exactly (or cannot write)."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFError(f"{path}: cannot read as JSON: {e}") from None


def _get(hf: dict, path: Path, name: str, tp: type, default=_MISSING):
    """hf[name] checked against `tp` (int accepted for float; bool never for numbers); missing or null: `default`."""
    if (value := hf.get(name)) is None:
        if default is _MISSING:
            raise HFError(f"{path}: missing required field {name!r}")
        return default
    ok = isinstance(value, bool) if tp is bool else (
        isinstance(value, (int, float) if tp is float else tp) and not isinstance(value, bool))
    if not ok or (tp is int and value <= 0):
        raise HFError(f"{path}: field {name!r}={value!r} must be {'a positive int' if tp is int else tp.__name__}")
    return float(value) if tp is float else value


def is_hub_id(path) -> bool:
    """`owner/name[@revision]` that names no local path: a model on the Hugging Face Hub."""
    return not Path(path).exists() and HUB_ID.fullmatch(str(path)) is not None and ".." not in str(path)


def hub_snapshot(hub_id: str) -> str:
    """The local directory of Hub model `hub_id`, through huggingface_hub: the user's cache (HF_HOME, HF_TOKEN,
    HF_HUB_OFFLINE as usual), else a download of only the files load_model reads."""
    hub = optional_import("huggingface_hub", "huggingface_hub", "hub")
    repo, _, revision = hub_id.partition("@")
    try:
        return hub.snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES)
    except hub.errors.LocalEntryNotFoundError:
        why = "the Hub cannot be reached (or HF_HUB_OFFLINE is set) and nothing of it is cached"
    except (hub.errors.RepositoryNotFoundError, hub.errors.GatedRepoError):
        why = "no such model on the Hub, or a private or gated one your token (HF_TOKEN) cannot read"
    except (hub.errors.RevisionNotFoundError, hub.errors.HfHubHTTPError, hub.errors.HFValidationError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise HFError(f"model {hub_id!r} is not a local directory, and {why}; pass a local directory, e.g. after "
                  f"`hf download {repo} --local-dir DIR` where there is network") from None


def is_hf_dir(path) -> bool:
    """A Hugging Face model directory (a config.json that is not a minichord checkpoint's), or a Hub id."""
    if is_hub_id(path):
        return True
    if not (config := Path(path) / "config.json").is_file() or (Path(path) / "latest").exists():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") != "minichord-checkpoint"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return True  # hf_model_config says what is wrong with it


def load_model(path) -> tuple[Transformer, TokenizerLike]:
    """(model, tokenizer) on the CPU of a Hugging Face model directory or Hub id, or a minichord checkpoint."""
    if is_hf_dir(path):
        from minichord.chat import load_tokenizer  # jinja2: only for a chat model

        path = hub_snapshot(path) if is_hub_id(path) else path

        return load_hf_model(path), load_tokenizer(path)
    if (ckpt := load_checkpoint(path)).tokenizer is None:
        raise ValueError(f"checkpoint {path} has no tokenizer.json")
    return ckpt.model, ckpt.tokenizer


def hf_model_config(model_dir) -> ModelConfig:
    """`model_dir`/config.json of a Qwen2ForCausalLM or LlamaForCausalLM as a ModelConfig."""
    path = Path(model_dir) / "config.json"
    if not isinstance(hf := _read_json(path), dict):
        raise HFError(f"{path}: not a JSON object")
    archs = hf.get("architectures")
    family = ARCHITECTURES.get(archs[0]) if isinstance(archs, list) and archs else (
        hf.get("model_type") if archs is None and hf.get("model_type") in ("qwen2", "llama") else None)
    if family is None:
        raise HFError(f"{path}: architectures={archs!r} (model_type={hf.get('model_type')!r}) is not one "
                      f"of {sorted(ARCHITECTURES)}")

    def refuse(bad, field: str, why: str) -> None:  # bad only where config.json sets `field`
        if bad:
            raise HFError(f"{path}: {field}={hf[field]!r} is not supported ({why})")

    refuse(hf.get("rope_scaling") is not None, "rope_scaling", "minichord's RoPE is unscaled")
    rope = _get(hf, path, "rope_parameters", dict, {})  # transformers >= 5 writes rope_theta in here
    refuse(rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"},
           "rope_parameters", "minichord's RoPE is unscaled")
    refuse(family == "qwen2" and _get(hf, path, "use_sliding_window", bool, False), "use_sliding_window",
           "minichord attends to the full context")
    refuse(any(t != "full_attention" for t in _get(hf, path, "layer_types", list, [])), "layer_types",
           "minichord attends to the full context")
    refuse(_get(hf, path, "hidden_act", str, "silu") != "silu", "hidden_act", "minichord's MLP is SwiGLU with silu")
    refuse(family == "llama" and _get(hf, path, "attention_bias", bool, False), "attention_bias",
           "Llama's puts a bias on o_proj too; minichord's o_proj has none")
    refuse(family == "llama" and _get(hf, path, "mlp_bias", bool, False), "mlp_bias", "minichord's MLP has no biases")
    refuse(hf.get("quantization_config") is not None, "quantization_config", "minichord reads plain float weights")

    dim, n_heads = _get(hf, path, "hidden_size", int), _get(hf, path, "num_attention_heads", int)
    refuse(_get(hf, path, "head_dim", int, dim // n_heads) != dim // n_heads, "head_dim",
           f"minichord's head_dim is hidden_size // num_attention_heads = {dim // n_heads}")
    refuse(n_heads % (n_kv_heads := _get(hf, path, "num_key_value_heads", int, n_heads)), "num_key_value_heads",
           f"num_attention_heads={n_heads} is not a multiple of it")
    vocab_size = _get(hf, path, "vocab_size", int)
    if (tok_file := path.parent / "tokenizer.json").is_file():  # vocab_size covers its ids (added tokens included)
        tok = _read_json(tok_file)
        vocab = tok.get("model", {}).get("vocab") or {}  # BPE/WordPiece: {piece: id}; Unigram: [[piece, score]]
        ids = [*(vocab.values() if isinstance(vocab, dict) else range(len(vocab))),
               *(t["id"] for t in tok.get("added_tokens", []))]
        if ids and vocab_size < (n_ids := max(ids) + 1):
            raise HFError(f"{path}: vocab_size={vocab_size} is smaller than the {n_ids} ids of {tok_file}")
    theta = _get(rope, path, "rope_theta", float, _get(hf, path, "rope_theta", float, 10000.0))
    try:
        return ModelConfig(
            vocab_size=vocab_size, dim=dim, n_layers=_get(hf, path, "num_hidden_layers", int), n_heads=n_heads,
            n_kv_heads=n_kv_heads, ffn_dim=_get(hf, path, "intermediate_size", int), rope_theta=theta,
            max_seq_len=_get(hf, path, "max_position_embeddings", int), norm_eps=_get(hf, path, "rms_norm_eps", float),
            qkv_bias=family == "qwen2", tie_embeddings=_get(hf, path, "tie_word_embeddings", bool, False))
    except ConfigError as e:
        raise HFError(f"{path}: {e}") from None


def _hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def load_hf_model(model_dir, *, dtype: torch.dtype = torch.float32, device="cpu") -> Transformer:
    """A Transformer with a Hugging Face directory's weights. Strict: every tensor the config implies with its
    shape, nothing else (but a tied `lm_head.weight`, `inv_freq`)."""
    cfg = hf_model_config(model_dir := Path(model_dir))
    with torch.device("meta"):  # no memory, no init: every parameter is replaced below
        model = Transformer(cfg)
    wanted = {_hf_name(n): (n, p) for n, p in model.named_parameters()}
    if (listing := model_dir / "model.safetensors.index.json").is_file():  # files: {HF tensor name: its file}
        if not isinstance(weight_map := _read_json(listing).get("weight_map"), dict) or not weight_map:
            raise HFError(f"{listing}: missing or empty field 'weight_map'")
        if missing := [shard for shard in sorted(set(weight_map.values())) if not (model_dir / shard).is_file()]:
            raise HFError(f"{model_dir / missing[0]}: shard listed in {listing} is missing")
        files = {name: model_dir / shard for name, shard in weight_map.items()}
    elif (listing := model_dir / "model.safetensors").is_file():
        with safe_open(listing, framework="pt") as f:
            files = {name: listing for name in f.keys()}
    else:
        raise HFError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    if missing := sorted(set(wanted) - set(files)):
        raise HFError(f"{listing}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    state = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="pt", device="cpu") as f:
            for hf_name in f.keys():
                tied_head = hf_name == "lm_head.weight" and cfg.tie_embeddings
                if files.get(hf_name) != file or hf_name.endswith("rotary_emb.inv_freq") or tied_head:
                    continue
                if hf_name not in wanted:
                    raise HFError(f"{file}: unexpected tensor {hf_name!r} for {cfg}")
                name, param = wanted[hf_name]
                if (shape := tuple(f.get_slice(hf_name).get_shape())) != tuple(param.shape):
                    raise HFError(f"{file}: tensor {hf_name!r} has shape {shape}, config.json implies "
                                  f"{tuple(param.shape)}")
                state[name] = f.get_tensor(hf_name).to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """The config.json of `cfg`: Qwen2 with q/k/v biases, Llama without."""
    arch, family = ("Qwen2ForCausalLM", "qwen2") if cfg.qkv_bias else ("LlamaForCausalLM", "llama")
    extra = {"use_sliding_window": False, "sliding_window": None} if cfg.qkv_bias else \
        {"attention_bias": False, "mlp_bias": False}
    return {"architectures": [arch], "model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": None, "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": str(dtype).removeprefix("torch."), **extra}


def write_dir_atomically(out_dir: Path, fill) -> Path:
    """fill(tmp) on a fresh sibling temp dir, then os.replace it in for `out_dir`. An existing `out_dir` is replaced
    only if empty or an earlier export (a Hugging Face directory of only the files an export writes): a checkpoint,
    a run or anyone's downloaded model is refused before any work, never overwritten."""
    (out_dir := Path(out_dir)).parent.mkdir(parents=True, exist_ok=True)
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else [out_dir] if os.path.lexists(out_dir) else []
    if entries and not (is_hf_dir(out_dir) and all(p.name in EXPORT_FILES and p.is_file() and not p.is_symlink()
                                                   for p in entries)):
        raise HFError(f"refusing to replace {out_dir}: it holds {', '.join(sorted(p.name for p in entries)[:4])}, "
                      f"which no export wrote (a checkpoint, a run, a model?); give a new or empty directory")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def export_hf(model: Transformer, out_dir, *, tokenizer_dir=None, extra_files: dict[str, str] | None = None) -> Path:
    """`model` as a Hugging Face directory, with the tokenizer files of `tokenizer_dir` and `extra_files`."""
    tensors = {_hf_name(n): p.detach().cpu().contiguous() for n, p in model.state_dict().items()}
    dtype = next(iter(tensors.values())).dtype

    def fill(tmp: Path):
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(model.cfg, dtype), indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return write_dir_atomically(Path(out_dir), fill)


# minichord's chat format (tokenizer.py) as a Jinja chat template, so `apply_chat_template` works.
CHAT_TEMPLATE = ("{{ '<|bos|>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>' + m['content'] }}"
                 "{% elif m['role'] == 'assistant' %}{{ '<|assistant|>' + m['content'] + '<|eos|>' }}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def export_checkpoint(ckpt_path, out_dir) -> Path:
    """`minichord export CKPT OUT_DIR`: a minichord checkpoint and its tokenizer as an HF directory."""
    if is_hf_dir(ckpt_path):
        raise HFError(f"{ckpt_path} is already a Hugging Face directory; export takes a minichord "
                      f"checkpoint (a run's checkpoint/ or one of its step directories)")
    ckpt = load_checkpoint(ckpt_path)
    tok, files = ckpt.tokenizer, {} if ckpt.tokenizer is None else ckpt.tokenizer.files()
    if tok is not None and "tokenizer_config.json" not in files:  # the toy's: its fixed chat format as a template
        names, template = tok.special_tokens, CHAT_TEMPLATE
        for role in ("bos", "user", "assistant", "eos"):
            template = template.replace(f"<|{role}|>", names[role])
        files["tokenizer_config.json"] = json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names["bos"], "eos_token": names["eos"],
            "pad_token": names["pad"], "chat_template": template, "model_max_length": ckpt.model.cfg.max_seq_len},
            indent=2)
        files["generation_config.json"] = json.dumps(
            {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}, indent=2)
    return export_hf(ckpt.model, out_dir, extra_files=files)
