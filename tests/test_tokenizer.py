"""Tokenizer: exact ASCII round trip, one token per digit, the chat format's loss mask, files."""

import json
import random
import string

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from minichord.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError

CORPUS = [
    "What is 123 + 4567? The answer is 4690.",
    "Reverse the word 'banana': ananab",
    "Sort these letters: d c b a -> a b c d",
    "Step 1: add the ones digits. 7 + 3 = 10, write 0 carry 1.\nStep 2: done.",
    "copy: hello world, hello world!",
] * 8


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=200)


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.decode([i], skip_special=False) for i in range(5)] == SPECIAL_TOKENS
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.user_id, tok.assistant_id) == (0, 1, 2, 3, 4)
    assert 133 < tok.vocab_size <= 200  # learned some merges, never more than asked


def test_ascii_round_trip(tok):
    rng = random.Random(0)
    texts = [
        "", " ", "  two leading spaces", "trailing   ", "tabs\tand\nnewlines\r\n",
        "".join(chr(i) for i in range(128)),  # every ASCII character, control chars included
        "What is 123 + 4567? The answer is 4690.",  # seen in training: merges apply
        "MiXeD CaSe, punctuation!?;:'\"()[]{}<>|\\/~`@#$%^&*_-=+",
    ]
    texts += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 60))) for _ in range(30)]
    for text in texts:
        ids = tok.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert tok.decode(ids) == text, repr(text)
    # merges are used: a training sentence takes fewer tokens than bytes
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0])


def test_every_digit_is_its_own_token(tok):
    number = "123456789012"
    ids = tok.encode(number)
    assert len(ids) == 12
    assert [tok.decode([i]) for i in ids] == list(number)
    # also inside words and after spaces: the digits never merge with anything
    for text in ["x=1234567", "abc007def", " 42", "3.14159"]:
        pieces = [tok.decode([i]) for i in tok.encode(text)]
        digits = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digits == [c for c in text if c.isdigit()], (text, pieces)


def test_encode_prompt_is_bos_user_prompt_assistant(tok):
    assert tok.encode_prompt("What is 2+2?") == [1, 3, *tok.encode("What is 2+2?"), 4]


def test_encode_example_mask_covers_exactly_response_and_eos(tok):
    prompt, response = "What is 12 + 30?", "The answer is 42."
    ids, mask = tok.encode_example(prompt, response)
    prompt_ids, response_ids = tok.encode_prompt(prompt), tok.encode(response)
    assert ids == prompt_ids + response_ids + [tok.eos_id]
    assert len(mask) == len(ids)
    assert mask == [False] * len(prompt_ids) + [True] * (len(response_ids) + 1)
    assert [i for i, m in zip(ids, mask) if m] == response_ids + [tok.eos_id]
    # an empty response still trains the model to stop
    ids, mask = tok.encode_example(prompt, "")
    assert sum(mask) == 1 and mask[-1] and ids[-1] == tok.eos_id


def test_decode_skips_special_tokens_unless_asked(tok):
    ids, _ = tok.encode_example("hi", "yo")
    assert tok.decode(ids) == "hiyo"
    assert tok.decode(ids, skip_special=False) == "<|bos|><|user|>hi<|assistant|>yo<|eos|>"
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_save_load_and_json_round_trip(tok, tmp_path):
    text = "Step 3: 99 * 101 = 9999\n  ok"
    path = tok.save(tmp_path / "tokenizer.json")
    for loaded in (Tokenizer.load(path), Tokenizer.load(tmp_path), Tokenizer.from_json(tok.to_json())):
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.encode_example("a", "b") == tok.encode_example("a", "b")
    json.loads(path.read_text())  # plain Hugging Face JSON


def test_load_any_hf_tokenizer_json_by_special_token_names(tmp_path):
    """A tokenizer.json whose special tokens have other names: clear error, or name them."""
    names = ["<pad>", "<s>", "</s>", "[U]", "[A]"]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=names,
                                                       show_progress=False))
    path = tmp_path / "other.json"
    hf.save(str(path))
    with pytest.raises(TokenizerError) as err:
        Tokenizer.load(path)
    message = str(err.value)
    assert str(path) in message
    for missing in SPECIAL_TOKENS:
        assert missing in message
    mapping = dict(zip(["pad", "bos", "eos", "user", "assistant"], names))
    other = Tokenizer.load(path, special_tokens=mapping)
    assert (other.pad_id, other.bos_id, other.eos_id) == (0, 1, 2)
    assert other.encode_prompt("x")[0] == other.bos_id
    # only some missing: the error names just those
    with pytest.raises(TokenizerError, match="eos") as err:
        Tokenizer.load(path, special_tokens={**mapping, "eos": "<|nope|>"})
    assert "<|nope|>" in str(err.value) and "bos" not in str(err.value)


def test_non_ascii_is_refused_or_supported_with_full_alphabet(tok):
    with pytest.raises(TokenizerError, match="é"):
        tok.encode("café")
    full = Tokenizer.train(CORPUS, vocab_size=300, full_byte_alphabet=True)
    for text in ["café", "naïve 中文 😀", "plain"]:
        assert full.decode(full.encode(text)) == text


def test_training_errors():
    with pytest.raises(TokenizerError, match="empty corpus"):
        Tokenizer.train([])
    with pytest.raises(TokenizerError, match="empty corpus"):
        Tokenizer.train(["", ""])
    with pytest.raises(TokenizerError, match="vocab_size=100 is too small.*133"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(TokenizerError, match="261"):
        Tokenizer.train(CORPUS, vocab_size=256, full_byte_alphabet=True)
    with pytest.raises(TokenizerError, match="iterable of strings"):
        Tokenizer.train("just one string")
    assert Tokenizer.train(["x"], vocab_size=133).vocab_size == 133  # the smallest works


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="not found") as err:
        Tokenizer.load(missing)
    assert str(missing) in str(err.value)
    for content in [b"{ this is not json", b"\x00\xff\xfe garbage", b'{"version": "1.0"}']:
        bad = tmp_path / "bad.json"
        bad.write_bytes(content)
        with pytest.raises(TokenizerError) as err:
            Tokenizer.load(bad)
        assert str(bad) in str(err.value)


def test_special_token_ids_must_lie_inside_the_vocabulary(tok):
    """An eos id beyond the vocabulary can never be sampled: generation would never stop."""
    d = json.loads(tok.to_json())
    d["model"]["vocab"]["<|eos|>"] = 500
    next(t for t in d["added_tokens"] if t["content"] == "<|eos|>")["id"] = 500
    with pytest.raises(TokenizerError, match=r"eos='<\|eos\|>' has id 500") as err:
        Tokenizer.from_json(json.dumps(d))
    assert f"[0, {tok.vocab_size})" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TokenizerError, match="lone surrogate"):
        tok.encode("add \ud800 1")
