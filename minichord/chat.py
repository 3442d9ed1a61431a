"""A model's own tokenizer and chat template (Hugging Face files), a `TokenizerLike` as the toy `Tokenizer` is.

Files read from a model directory (or the same {name: text} dict embedded in a minichord checkpoint):

    tokenizer.json          required; loaded by the `tokenizers` library
    tokenizer_config.json   bos_token / eos_token / pad_token / unk_token (a string, {"content": ...} or null)
                            and chat_template (a string, or a list of {"name", "template"}: "default" is used)
    chat_template.jinja     the template as a file of its own: it wins over tokenizer_config.json's
    generation_config.json  optional: eos_token_id (an int or a list), bos_token_id, pad_token_id

Ids: `eos_id` is tokenizer_config's eos_token (the end-of-turn token, e.g. <|im_end|>); `stop_ids` adds
generation_config's eos ids; `pad_id` is the pad_token, else generation_config's pad_token_id, else eos_id.
Rendering follows transformers' `apply_chat_template`; no special tokens are added: the template writes the bos."""

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minichord.tokenizer import Tokenizer, TokenizerError, encode_text, parse_tokenizer_json

FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")
SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # the <role>_token names templates may read
ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # of generation_config.json


def _one_line(x) -> str:
    return " ".join(str(x).split())


class _GenerationTag(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (it marks assistant text): renders the body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno, body = next(parser.stream).lineno, parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
_ENV.filters["tojson"] = _tojson
_ENV.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))


def _jinja_error(e: Exception) -> str:
    if isinstance(e, jinja2.TemplateSyntaxError):
        return _one_line(f"line {e.lineno}: {e.message}")
    return _one_line(f"{type(e).__name__}: {e}" if not isinstance(e, jinja2.TemplateError) else e)


def _json_object(files: dict, name: str, source: str) -> dict:
    if name not in files:
        return {}
    try:
        value = json.loads(files[name])
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{source}/{name}: not valid JSON: {_one_line(e)}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{source}/{name}: not a JSON object")
    return value


def _token_text(value, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(_one_line(f"{where} must be a string, {{\"content\": ...}} or null, not {value!r:.80}"))


def _template(files: dict, config: dict, source: str) -> tuple[str, str]:
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"], f"{source}/chat_template.jinja"
    where, t = f"{source}/tokenizer_config.json", config.get("chat_template")
    if t is None:
        raise TokenizerError(f"{where}: no 'chat_template' (and no chat_template.jinja): minichord needs one to "
                             "build prompts")
    if isinstance(t, list):
        if "default" not in (named := {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}):
            raise TokenizerError(f"{where}: 'chat_template' is a list with no template named 'default' "
                                 f"(names: {sorted(map(str, named))})")
        t = named["default"]
    if not isinstance(t, str):
        raise TokenizerError(f"{where}: 'chat_template' must be a string or a list of {{name, template}}, "
                             f"not {type(t).__name__}")
    return t, where


class ChatTokenizer:
    """A Hugging Face tokenizer and its chat template."""

    def __init__(self, files: dict[str, str], source: str = "tokenizer files", *, system: str | None = None):
        self._files = {name: text for name, text in files.items() if name in FILES and text is not None}
        self.source, self.system = source, system
        if "tokenizer.json" not in self._files:
            raise TokenizerError(f"{source}/tokenizer.json: file not found")
        self._tok = parse_tokenizer_json(self._files["tokenizer.json"], f"{source}/tokenizer.json")
        self._config = _json_object(self._files, "tokenizer_config.json", source)
        self._gen = _json_object(self._files, "generation_config.json", source)
        self.chat_template, self._template_file = _template(self._files, self._config, source)
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

        where, gwhere = f"{source}/tokenizer_config.json", f"{source}/generation_config.json"
        self.special_tokens: dict[str, str] = {}  # role -> token text, the roles the config names
        ids, gen = {}, {}
        for role in SPECIAL_ROLES:
            if (text := _token_text(self._config.get(f"{role}_token"), f"{where}: '{role}_token'")) is not None:
                self.special_tokens[role], ids[role] = text, self._tok.token_to_id(text)
                if role in ("bos", "eos", "pad", "unk") and (ids[role] is None or ids[role] >= self.vocab_size):
                    raise TokenizerError(f"{where}: '{role}_token' {text!r} is not in the vocabulary of "
                                         f"tokenizer.json ({self.vocab_size} ids)")
        for field in ID_FIELDS:
            value = self._gen.get(field)
            values = [] if value is None else value if isinstance(value, list) and field == "eos_token_id" else [value]
            if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < self.vocab_size for v in values):
                raise TokenizerError(f"{gwhere}: '{field}' {value!r} is not an id of the vocabulary "
                                     f"[0, {self.vocab_size}) of tokenizer.json")
            gen[field] = values
        self.eos_id: int = ids.get("eos", (gen["eos_token_id"] or [None])[0])
        if self.eos_id is None:
            raise TokenizerError(f"{where}: no 'eos_token' (and no eos_token_id in generation_config.json): "
                                 "minichord needs the end-of-turn token")
        self.stop_ids: list[int] = list(dict.fromkeys([*gen["eos_token_id"], self.eos_id]))
        self.pad_id: int = ids.get("pad", (gen["pad_token_id"] or [self.eos_id])[0])
        self.bos_id: int | None = ids.get("bos", (gen["bos_token_id"] or [None])[0])
        try:
            self._template = _ENV.from_string(self.chat_template)
        except Exception as e:  # TemplateSyntaxError, or e.g. a RecursionError on absurd nesting
            raise TokenizerError(f"{self._template_file}: 'chat_template' does not compile: "
                                 f"{_jinja_error(e)}") from None
        self.encode_prompt("Hello")  # a template that cannot render a prompt fails here, when the files load

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, system: str | None = None) -> "ChatTokenizer":
        if not (d := Path(model_dir)).is_dir():
            raise TokenizerError(f"{d}: not a directory")
        files = {}
        for name in FILES:
            try:
                files[name] = (d / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(_one_line(f"{d / name}: cannot read: {e}")) from None
        return cls(files, str(d), system=system)

    def files(self) -> dict[str, str]:
        """{file name: text} that `ChatTokenizer(files)` reads back as this tokenizer (but its `system` prompt)."""
        config = {**self._config, "chat_template": self.chat_template}
        config.update({f"{role}_token": text for role, text in self.special_tokens.items()})
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        out = {"tokenizer.json": self._files["tokenizer.json"],
               "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n"}
        if any(self._gen.get(field) is not None for field in ID_FIELDS):
            out["generation_config.json"] = json.dumps(self._gen, indent=2, ensure_ascii=False) + "\n"
        return out

    def render(self, messages: list[dict], add_generation_prompt: bool = False, **variables) -> str:
        """The chat template's text for `messages` (extra template variables, e.g. tools=[...], by keyword)."""
        context = {"tools": None, "documents": None, **{f"{r}_token": t for r, t in self.special_tokens.items()},
                   **variables, "messages": messages, "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(**context)
        except Exception as e:  # raise_exception's TemplateError, an undefined variable, a TypeError, ...
            raise TokenizerError(f"{self._template_file}: 'chat_template' fails to render {len(messages)} message(s) "
                                 f"(add_generation_prompt={add_generation_prompt}): {_jinja_error(e)}") from None

    def _messages(self, prompt: str, response: str | None = None) -> list[dict]:
        turns = [("system", self.system), ("user", prompt), ("assistant", response)]
        return [{"role": role, "content": text} for role, text in turns if text is not None or role == "user"]

    def encode(self, text: str) -> list[int]:
        return encode_text(self._tok, text)

    decode = Tokenizer.decode  # the same `tokenizers` call and id check (both keep it in self._tok)

    def encode_prompt(self, prompt: str) -> list[int]:
        """The chat up to where the assistant's answer starts: (system,) user, and the generation prompt."""
        return self.encode(self.render(self._messages(prompt), add_generation_prompt=True))

    def encode_example(self, prompt: str, response: str) -> tuple[list[int], list[bool]]:
        """(ids, loss_mask) of prompt + response, in the format of the model's own rollouts: the loss mask covers
        the response and its end-of-turn token; the ids end at the first stop id."""
        prompt_ids = self.encode_prompt(prompt)
        ids = self.encode(self.render(self._messages(prompt, response), add_generation_prompt=False))
        if ids[:len(prompt_ids)] != prompt_ids:
            raise TokenizerError(f"{self._template_file}: 'chat_template' does not render the prompt "
                                 "(add_generation_prompt=True) as a prefix of the conversation with the response "
                                 "(add_generation_prompt=False), so demonstrations cannot be tokenized like rollouts")
        response_ids, stops = ids[len(prompt_ids):], set(self.stop_ids)
        end = next((i + 1 for i, t in enumerate(response_ids) if t in stops), None)  # drops e.g. "\n" after <|im_end|>
        response_ids = response_ids[:end] if end is not None else [*response_ids, self.eos_id]
        return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)

    def __repr__(self) -> str:
        return (f"ChatTokenizer({self.source!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
                f"stop_ids={self.stop_ids}, pad_id={self.pad_id})")


def load_tokenizer(path: str | Path, *, system: str | None = None) -> ChatTokenizer | Tokenizer:
    """A ChatTokenizer if directory `path` has a chat template, else the toy `Tokenizer.load(path)`."""
    d = Path(path)
    chat = (d / "chat_template.jinja").is_file()
    if not chat and (d / "tokenizer_config.json").is_file():
        try:
            config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
            chat = not isinstance(config, dict) or config.get("chat_template") is not None
        except (OSError, ValueError):  # unreadable: from_dir names the problem
            chat = True
    return ChatTokenizer.from_dir(d, system=system) if chat else Tokenizer.load(d)
