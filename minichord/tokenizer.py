"""A small byte-level BPE tokenizer with a fixed chat format, built on Hugging Face `tokenizers`.

Vocabulary: ids 0..4 are <|pad|> <|bos|> <|eos|> <|user|> <|assistant|>, then the byte-level alphabet of the 128
ASCII bytes (all 256 with `full_byte_alphabet=True`), then the BPE merges. Every digit is its own piece, then
GPT-2's byte-level split with no prefix space, so decode(encode(s)) == s for any ASCII s. Chat format:

    <|bos|> <|user|> {prompt tokens} <|assistant|> {response tokens} <|eos|>
    '----------- encode_prompt(prompt) ---------'  '------ loss mask True ------'

Files: the standard tokenizer.json; any Hugging Face one loads (`special_tokens={"eos": "<|endoftext|>"}` renames)."""

import json
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_SPECIALS = {role: f"<|{role}|>" for role in ("pad", "bos", "eos", "user", "assistant")}  # role -> text
SPECIAL_TOKENS, SPECIAL_ROLES = list(DEFAULT_SPECIALS.values()), list(DEFAULT_SPECIALS)  # ids 0..4


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, read, or used as asked."""


class TokenizerLike(Protocol):
    """What the library uses of a tokenizer: `Tokenizer` and `chat.ChatTokenizer` both have it."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None
    special_tokens: dict[str, str]  # role -> token text

    stop_ids: list[int]  # every id that ends a generation

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode_example(self, prompt: str, response: str) -> tuple[list[int], list[bool]]: ...  # (ids, loss_mask)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...

    def files(self) -> dict[str, str]: ...  # {file name: text} a checkpoint stores


def encode_text(tok: HFTokenizer, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    if not isinstance(text, str):
        raise TokenizerError(f"encode() takes a str, got {type(text).__name__}")
    if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):  # the Rust side would TypeError
        raise TokenizerError(f"text has a lone surrogate (not encodable as UTF-8): {text!r:.80}")
    return tok.encode(text, add_special_tokens=False).ids


def parse_tokenizer_json(text: str, source: str) -> HFTokenizer:
    try:
        json.loads(text)  # a clearer message than the Rust parser's for non-JSON input
        (tok := HFTokenizer.from_str(text)).encode("zq \x7f minichord")  # e.g. WordLevel without its unk: here,
        return tok  # not at the first unknown word of a run
    except Exception as e:  # json.JSONDecodeError, or the Rust side's Exception
        raise TokenizerError(" ".join(f"{source}: not a valid tokenizer.json: {e}".split())) from None


def _json_file(path: str | Path) -> Path:  # a tokenizer.json, or the one in a directory
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


class Tokenizer:
    """A `tokenizers.Tokenizer` and the ids of the five special tokens."""

    def __init__(self, hf_tokenizer: HFTokenizer, special_tokens: dict[str, str] | None = None, source="tokenizer"):
        self._tok = hf_tokenizer
        names = {**DEFAULT_SPECIALS, **(special_tokens or {})}
        if unknown_roles := sorted(set(names) - set(SPECIAL_ROLES)):
            raise TokenizerError(f"unknown special-token roles {unknown_roles}; valid roles: {SPECIAL_ROLES}")
        ids = {role: hf_tokenizer.token_to_id(names[role]) for role in SPECIAL_ROLES}
        if missing := [f"{role}={names[role]!r}" for role in SPECIAL_ROLES if ids[role] is None]:
            raise TokenizerError(f"{source}: special tokens not in the vocabulary: {', '.join(missing)}; pass "
                                 f"special_tokens={{role: token text}} to name the ones this file uses")
        V = self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        outside = [f"{role}={names[role]!r} has id {ids[role]}" for role in SPECIAL_ROLES if ids[role] >= V]
        if outside:  # e.g. an eos the model can never emit: generation would never stop
            raise TokenizerError(f"{source}: special token ids outside the vocabulary [0, {V}): {', '.join(outside)}")
        if ids["eos"] == ids["pad"]:  # padding would read as the end of every answer, and the end as padding
            raise TokenizerError(f"{source}: eos {names['eos']!r} must be another token than pad {names['pad']!r}")
        self.special_tokens: dict[str, str] = {role: names[role] for role in SPECIAL_ROLES}
        self.pad_id, self.bos_id, self.eos_id, self.user_id, self.assistant_id = (ids[r] for r in SPECIAL_ROLES)
        self.stop_ids: list[int] = [self.eos_id]  # every id that ends a generation

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 256, *, min_frequency: int = 2,
              full_byte_alphabet: bool = False) -> "Tokenizer":
        """BPE merges on `texts` up to `vocab_size` ids (fewer on a small corpus: size the model by `.vocab_size`)."""
        if full_byte_alphabet:
            alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        else:  # the byte-level characters of ASCII 0..127, one char each
            to_chars = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            alphabet = [to_chars.pre_tokenize_str(chr(b))[0][0] for b in range(128)]
        if vocab_size < (smallest := len(SPECIAL_TOKENS) + len(alphabet)):
            raise TokenizerError(f"vocab_size={vocab_size} is too small: {len(SPECIAL_TOKENS)} special tokens + "
                                 f"{len(alphabet)} byte tokens need at least {smallest}")
        if isinstance(texts, str):
            raise TokenizerError("train() takes an iterable of strings, not one string")
        corpus = [t for t in texts if t]
        if bad := [t for t in corpus if not isinstance(t, str)]:
            raise TokenizerError(f"training texts must be str, got {type(bad[0]).__name__}: {bad[0]!r:.60}")
        if not corpus:
            raise TokenizerError("cannot train a tokenizer on an empty corpus (no non-empty texts)")

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=alphabet, show_progress=False)
        tok.train_from_iterator(corpus, trainer)  # puts SPECIAL_TOKENS first, in order (tests/test_tokenizer.py)
        return cls(tok)

    @classmethod
    def from_json(cls, s: str, special_tokens: dict[str, str] | None = None, source="tokenizer JSON") -> "Tokenizer":
        return cls(parse_tokenizer_json(s, source), special_tokens, source)

    def to_json(self) -> str:
        return self._tok.to_str()

    def files(self) -> dict[str, str]:
        return {"tokenizer.json": self.to_json()}

    @classmethod
    def load(cls, path: str | Path, special_tokens: dict[str, str] | None = None) -> "Tokenizer":
        path = _json_file(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from None
        return cls.from_json(text, special_tokens, source=str(path))

    def save(self, path: str | Path) -> Path:
        (path := _json_file(path)).write_text(self.to_json(), encoding="utf-8")
        return path

    def encode(self, text: str) -> list[int]:
        """encode_text, refusing non-ASCII text that does not round-trip: BPE drops characters outside its alphabet."""
        ids = encode_text(self._tok, text)
        if not text.isascii() and self._tok.normalizer is None and self.decode(ids, skip_special=False) != text:
            lost = sorted({c for c in text if not c.isascii() and not self._tok.encode(c).ids})
            raise TokenizerError(f"text contains characters this tokenizer cannot represent: {lost or text!r:.80}"
                                 " (train with full_byte_alphabet=True for non-ASCII text)")
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids` (a list or a 1-D tensor)."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise TokenizerError(f"ids out of range [0, {self.vocab_size}): {bad[:10]}")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.bos_id, self.user_id, *self.encode(prompt), self.assistant_id]

    def encode_example(self, prompt: str, response: str) -> tuple[list[int], list[bool]]:
        """(ids, loss_mask): the whole chat sequence, and True on the response tokens and the final eos."""
        prompt_ids, response_ids = self.encode_prompt(prompt), [*self.encode(response), self.eos_id]
        return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)

    def token_text(self, token_id: int) -> str | None:
        """The vocabulary entry of one id (byte-level spelling)."""
        return self._tok.id_to_token(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id})"
