"""minichord.hf against transformers' own numbers: tiny random Qwen2 (tied, biases, padded vocab)
and Llama (untied, sharded) checkpoints with what transformers computed on them, made by
tests/fixtures/make_hf_fixtures.py. transformers is not needed here (one optional test uses it)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer

from minichord.checkpoint import save_checkpoint
from minichord.config import ModelConfig, SamplerConfig
from minichord.hf import HFError, export_checkpoint, export_hf, hf_model_config, load_hf_model
from minichord.model import Transformer
from minichord.sampler import generate
from minichord.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
NAMES = ["qwen2", "llama"]


def expected(name):
    return json.loads((FIXTURES / name / "expected.json").read_text()), load_file(FIXTURES / name / "expected.safetensors")


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids.to(next(model.parameters()).device)[None])[0].float()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    model = load_hf_model(FIXTURES / name)
    _, tensors = expected(name)
    for i in range(3):
        want = tensors[f"logits_{i}"]
        assert want.abs().max() > 5  # far from uniform: a wrong weight or convention shows
        torch.testing.assert_close(logits_of(model, tensors[f"ids_{i}"]), want, atol=1e-4, rtol=0)


def test_configs_read_as_written():
    q, l = hf_model_config(FIXTURES / "qwen2"), hf_model_config(FIXTURES / "llama")
    assert (q.qkv_bias, q.tie_embeddings, q.rope_theta, q.vocab_size) == (True, True, 1e6, 320)
    assert (l.qkv_bias, l.tie_embeddings, l.rope_theta, l.vocab_size) == (False, False, 5e5, 280)
    assert (q.dim, q.n_layers, q.n_heads, q.n_kv_heads, q.ffn_dim, q.max_seq_len) == (64, 2, 4, 2, 128, 128)
    assert load_hf_model(FIXTURES / "qwen2").lm_head is None and load_hf_model(FIXTURES / "llama").lm_head is not None


@pytest.mark.parametrize("name", NAMES)
def test_greedy_continuations_match_transformers(name):
    model = load_hf_model(FIXTURES / name)
    exp, _ = expected(name)
    prompts = [chat["ids"] for chat in exp["chats"]]  # different lengths: left padding is exercised
    out = generate(model, prompts, SamplerConfig(greedy=True, max_new_tokens=8),
                   eos_id=exp["eos_id"], pad_id=exp["pad_id"], vocab_size=exp["tokenizer_vocab_size"])
    for b, chat in enumerate(exp["chats"]):
        assert out.tokens[b][out.mask[b]].tolist() == chat["greedy"], chat["text"]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_load(name):
    model = load_hf_model(FIXTURES / name, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    _, tensors = expected(name)
    got, want = logits_of(model, tensors["ids_1"]), tensors["logits_1"]
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_ids_match_tokenizers(name):
    exp, _ = expected(name)
    hf = HFTokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    roles = {"pad": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|im_end|>", "user": "<|im_start|>",
             "assistant": "<|im_start|>"}  # minichord's five roles, mapped onto ChatML's three tokens
    tok = Tokenizer.load(FIXTURES / name, special_tokens=roles)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (exp["eos_id"], exp["pad_id"], exp["tokenizer_vocab_size"])
    for text, ids in exp["texts"].items():
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert tok.encode(text) == ids, text
    for chat in exp["chats"]:  # the rendered ChatML prompt tokenizes to the ids generation started from
        assert tok.encode(chat["text"]) == chat["ids"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_round_trip_is_bit_exact(name, dtype, tmp_path):
    model = load_hf_model(FIXTURES / name, dtype=dtype)
    out = export_hf(model, tmp_path / "out", tokenizer_dir=FIXTURES / name)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "generation_config.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[name]]
    assert config["torch_dtype"] == str(dtype).removeprefix("torch.")
    with safe_open(out / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) == (name == "llama") and "model.norm.weight" in names
    again = load_hf_model(out, dtype=dtype)
    assert again.cfg == model.cfg
    for (n, p), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == n2 and p.dtype == p2.dtype == dtype and torch.equal(p, p2), n
    export_hf(again, out)  # replacing an existing export leaves only the new one
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir or backup left behind


def test_export_checkpoint(tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.train(["What is 12 + 34? 46.", "hello world"] * 5, vocab_size=140)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=32, qkv_bias=False, tie_embeddings=False))
    out = export_checkpoint(save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok), tmp_path / "hf")
    again = load_hf_model(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))
    assert Tokenizer.load(out).encode("hello 12") == tok.encode("hello 12")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok_cfg["eos_token"], tok_cfg["pad_token"]) == ("<|eos|>", "<|pad|>")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.eos_id


# ---- refusals: one line naming the file and the field ------------------------------------------

def edited(tmp_path, name="qwen2", **changes):
    """A copy of a fixture whose config.json has `changes` (... deletes a field)."""
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    config = json.loads((d / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key, None) if value is ... else config.__setitem__(key, value)
    (d / "config.json").write_text(json.dumps(config))
    return d


def refused(model_dir, *words):
    with pytest.raises(HFError) as err:
        load_hf_model(model_dir)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert str(word) in message, (word, message)
    return message


@pytest.mark.parametrize("changes, words", [
    (dict(architectures=["MistralForCausalLM"]), ["architectures", "MistralForCausalLM"]),
    (dict(architectures=..., model_type="gemma"), ["architectures", "gemma"]),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), ["rope_scaling", "yarn"]),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), ["rope_parameters", "llama3"]),
    (dict(use_sliding_window=True, sliding_window=64), ["use_sliding_window", "True"]),
    (dict(layer_types=["full_attention", "sliding_attention"]), ["layer_types", "sliding_attention"]),
    (dict(head_dim=32), ["head_dim", "32"]),
    (dict(hidden_act="gelu"), ["hidden_act", "gelu"]),
    (dict(hidden_size=...), ["hidden_size", "missing"]),
    (dict(num_hidden_layers="2"), ["num_hidden_layers", "'2'"]),
    (dict(tie_word_embeddings=1), ["tie_word_embeddings", "bool"]),
    (dict(num_key_value_heads=0), ["num_key_value_heads", "positive"]),
    (dict(num_key_value_heads=3), ["num_key_value_heads=3", "num_attention_heads=4"]),
    (dict(vocab_size=100), ["vocab_size=100", "tokenizer.json", "300"]),
])
def test_unsupported_configs_are_refused(tmp_path, changes, words):
    d = edited(tmp_path, **changes)
    refused(d, d / "config.json", *words)


def test_llama_biases_are_refused(tmp_path):
    d = edited(tmp_path, "llama", mlp_bias=True)
    refused(d, d / "config.json", "mlp_bias")
    d = edited(tmp_path / "b", "llama", attention_bias=True)
    refused(d, d / "config.json", "attention_bias", "o_proj")


def test_v4_style_config_is_read(tmp_path):
    d = edited(tmp_path, "llama", rope_parameters=..., rope_theta=5e5, rope_scaling=None, head_dim=...)
    torch.testing.assert_close(load_hf_model(d).state_dict(), load_hf_model(FIXTURES / "llama").state_dict())


def test_missing_shard_is_refused(tmp_path):
    d = edited(tmp_path, "llama")
    (d / "model-00002-of-00002.safetensors").unlink()
    refused(d, d / "model-00002-of-00002.safetensors", d / "model.safetensors.index.json", "missing")


def test_missing_unexpected_and_misshapen_tensors_are_refused(tmp_path):
    d = edited(tmp_path, "qwen2")
    tensors = load_file(d / "model.safetensors")
    bias = tensors.pop("model.layers.1.self_attn.k_proj.bias")
    save_file(tensors, str(d / "model.safetensors"))
    refused(d, d / "model.safetensors", "model.layers.1.self_attn.k_proj.bias", "missing")
    save_file({**tensors, "model.layers.1.self_attn.k_proj.bias": bias, "model.extra.weight": bias.clone()},
              str(d / "model.safetensors"))
    refused(d, d / "model.safetensors", "model.extra.weight", "unexpected")
    save_file({**tensors, "model.layers.1.self_attn.k_proj.bias": bias[:-1]}, str(d / "model.safetensors"))
    refused(d, d / "model.safetensors", "model.layers.1.self_attn.k_proj.bias", "(31,)", "(32,)")
    d = edited(tmp_path / "b", "llama", tie_word_embeddings=False)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    del index["weight_map"]["lm_head.weight"]  # the shard still holds it, but the index is the listing
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(d, d / "model.safetensors.index.json", "lm_head.weight", "missing")


def test_transformers_reads_the_export(tmp_path):
    transformers = pytest.importorskip("transformers")
    for name in NAMES:
        model = load_hf_model(FIXTURES / name)
        out = export_hf(model, tmp_path / name, tokenizer_dir=FIXTURES / name)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
        ids = expected(name)[1]["ids_1"]
        with torch.no_grad():
            torch.testing.assert_close(hf(ids[None]).logits[0], logits_of(model, ids), atol=1e-4, rtol=0)
