"""ChatTokenizer: a checkpoint's tokenizer and chat template render and tokenize as transformers does
(tests/fixtures/hf/chat_expected.json, made by tests/fixtures/make_chat_fixtures.py); the loss mask of a
demonstration; stop and pad ids; files round trip; one-line errors naming the file and field."""

import datetime
import json
import shutil
from pathlib import Path

import pytest

from minichord.chat import ChatTokenizer, load_tokenizer
from minichord.tokenizer import Tokenizer, TokenizerError

HF = Path(__file__).parent / "fixtures" / "hf"
EXPECTED = json.loads((HF / "chat_expected.json").read_text(encoding="utf-8"))
NAMES = ["qwen2", "llama", "qwen25", "smollm2", "llama3"]
TEXTS = ["Hello, world!", "What is 12 + 30?", "<|im_start|>user\nHi<|im_end|>\n", "  spaces\tand\n\nnewlines",
         "Caf\u00e9 r\u00e9sum\u00e9 \u2014 \u00fcber", "", "unseenwordzzq 9876"]


def load(name: str, **kw) -> ChatTokenizer:
    return ChatTokenizer.from_dir(HF / EXPECTED[name]["dir"], **kw)


def cases(name: str, add_generation_prompt: bool):
    return [c for c in EXPECTED[name]["cases"] if c["add_generation_prompt"] == add_generation_prompt]


def split(messages):
    """(system or None, prompt, response or None) of a single-turn chat."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    rest = messages[1:] if system is not None else messages
    return system, rest[0]["content"], rest[1]["content"] if len(rest) > 1 else None


@pytest.mark.parametrize("name", NAMES)
def test_render_and_ids_match_transformers(name):
    tok = load(name)
    for case in EXPECTED[name]["cases"]:
        tools = {"tools": case["tools"]} if case["tools"] is not None else {}
        text = tok.render(case["messages"], case["add_generation_prompt"], **tools)
        assert text == case["text"]
        assert tok.encode(text) == case["ids"]


@pytest.mark.parametrize("name", NAMES)
def test_encode_prompt_matches_transformers(name):
    tok = load(name)
    single_turn = [c for c in cases(name, True) if len(c["messages"]) <= 2 and c["tools"] is None]
    assert len(single_turn) == 2
    for case in single_turn:
        system, prompt, _ = split(case["messages"])
        tok.system = system
        assert tok.encode_prompt(prompt) == case["ids"]
        assert tok.decode(case["ids"], skip_special=False) == case["text"]


def test_encode_prompt_of_the_hf_fixtures_expected_json():  # the prompts test_hf.py generated from
    for name in ("qwen2", "llama"):
        tok = load(name)
        for chat in json.loads((HF / name / "expected.json").read_text())["chats"]:
            system, prompt, _ = split(chat["messages"])
            tok.system = system
            assert tok.encode_prompt(prompt) == chat["ids"]
            assert tok.render(chat["messages"], add_generation_prompt=True) == chat["text"]


@pytest.mark.parametrize("name", NAMES)
def test_encode_example_is_the_conversation_cut_after_the_end_of_turn(name):
    tok = load(name)
    conversations = [c for c in cases(name, False) if c["tools"] is None]
    assert len(conversations) == 2
    for case in conversations:
        system, prompt, response = split(case["messages"])
        tok.system = system
        ids, mask = tok.encode_example(prompt, response)
        prompt_ids = tok.encode_prompt(prompt)
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids and mask == [False] * n + [True] * (len(ids) - n)
        assert ids[-1] == tok.eos_id  # ends at the end-of-turn token ...
        assert ids == case["ids"][:len(ids)]  # ... of transformers' conversation, cut there
        dropped = tok.decode(case["ids"][len(ids):], skip_special=False)
        assert dropped in ("", "\n")  # ChatML's newline after <|im_end|>; Llama-3 writes none
        masked = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
        assert masked == response + tok.special_tokens["eos"]
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == response


def test_encode_example_appends_eos_when_the_template_writes_no_stop_id(tmp_path):
    files = load("qwen2").files()
    config = json.loads(files["tokenizer_config.json"])
    config["chat_template"] = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tok = ChatTokenizer({**files, "tokenizer_config.json": json.dumps(config)}, "t")
    ids, mask = tok.encode_example("Hi", "Hello")
    assert ids[-1] == tok.eos_id and tok.decode([i for i, m in zip(ids, mask) if m], False) == "Hello\n<|im_end|>"


def test_system_prompt_is_prepended():
    tok = load("qwen2", system="You are terse.")
    assert tok.decode(tok.encode_prompt("Hi"), False) == ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                                                          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_special_ids_stop_ids_and_pad_fallback():
    q = load("qwen2")
    assert (q.eos_id, q.pad_id, q.stop_ids, q.vocab_size) == (2, 0, [2], 300)
    q25 = load("qwen25")  # generation_config eos [<|im_end|>, <|endoftext|>]
    assert q25.eos_id == 2 and q25.stop_ids == [2, 0] and q25.pad_id == 0 and q25.bos_id == 0
    l3 = load("llama3")  # generation_config eos [<|end_of_text|>, <|eom_id|>, <|eot_id|>], in that order
    eot = l3.encode("<|eot_id|>")[0]
    assert l3.eos_id == eot and l3.stop_ids == l3.encode("<|end_of_text|><|eom_id|><|eot_id|>")
    assert l3.pad_id == eot  # no pad_token, no pad_token_id: the eos
    assert l3.bos_id == l3.encode("<|begin_of_text|>")[0] and "pad" not in l3.special_tokens
    smol = load("smollm2")  # AddedToken dicts
    assert smol.special_tokens == {"bos": "<|im_start|>", "eos": "<|im_end|>", "unk": "<|endoftext|>",
                                   "pad": "<|im_end|>"}
    assert smol.pad_id == smol.eos_id == 2 and smol.stop_ids == [2]


def test_stop_ids_add_the_tokenizer_eos_and_pad_from_generation_config():
    files = load("qwen2").files()
    config = json.loads(files["tokenizer_config.json"])
    del config["pad_token"]
    gen = {"eos_token_id": [0], "pad_token_id": 1}
    tok = ChatTokenizer({**files, "tokenizer_config.json": json.dumps(config),
                          "generation_config.json": json.dumps(gen)}, "t")
    assert tok.stop_ids == [0, 2] and tok.eos_id == 2 and tok.pad_id == 1
    tok = ChatTokenizer({**files, "tokenizer_config.json": json.dumps(config),
                          "generation_config.json": "{}"}, "t")
    assert tok.stop_ids == [2] and tok.pad_id == 2 and "generation_config.json" not in tok.files()


def test_toy_tokenizer_stop_ids():
    toy = Tokenizer.train(["hello world 123"] * 4, vocab_size=140)
    assert toy.stop_ids == [toy.eos_id] == [2]


@pytest.mark.parametrize("name", NAMES)
def test_files_round_trip(name, tmp_path):
    tok = load(name, system="Be brief.")
    files = tok.files()
    assert "chat_template.jinja" not in files and json.loads(files["tokenizer_config.json"])["chat_template"]
    again = ChatTokenizer(files, "ckpt", system="Be brief.")
    for d in (tmp_path / "a", tmp_path / "b"):
        d.mkdir()
        for file, text in (files if d.name == "a" else again.files()).items():
            (d / file).write_text(text, encoding="utf-8")
    from_dir = ChatTokenizer.from_dir(tmp_path / "a", system="Be brief.")
    assert again.files() == files and from_dir.files() == files
    for other in (again, from_dir):
        assert other.chat_template == tok.chat_template  # tokenizer.json: the files() equality above
        assert (other.stop_ids, other.eos_id, other.pad_id, other.bos_id, other.vocab_size, other.special_tokens) == \
            (tok.stop_ids, tok.eos_id, tok.pad_id, tok.bos_id, tok.vocab_size, tok.special_tokens)
        assert [other.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
        assert other.encode_example("What is 1 + 1?", "2") == tok.encode_example("What is 1 + 1?", "2")


def test_chat_template_forms(tmp_path):
    src = HF / "qwen2"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, tmp_path / f)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    default = config["chat_template"]
    config["chat_template"] = [{"name": "tool_use", "template": "{{ raise_exception('not this one') }}"},
                               {"name": "default", "template": default}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTokenizer.from_dir(tmp_path).chat_template == default
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token is defined }}|{{ eos_token }}|"
                                                  "{{ messages[0]['content'] }}\n")
    tok = ChatTokenizer.from_dir(tmp_path)  # the .jinja file wins; no bos_token in the config: undefined
    assert tok.render([{"role": "user", "content": "x"}]) == "False|<|im_end|>|x"  # no keep_trailing_newline
    assert isinstance(load_tokenizer(tmp_path), ChatTokenizer)


def test_rendering_environment():
    files = load("qwen2").files()

    def render(template, **variables):
        config = {**json.loads(files["tokenizer_config.json"]), "chat_template": template}
        tok = ChatTokenizer({**files, "tokenizer_config.json": json.dumps(config)}, "t")
        return tok.render([{"role": "user", "content": "x"}], **variables)

    assert render("{{ {'a': '<é>'} | tojson }}") == '{"a": "<é>"}'  # not HTML-escaped, not ASCII-escaped
    assert render("{{ [1] | tojson(indent=2) }}") == "[\n  1\n]"
    assert render("{{ tools is none }}", tools=[{"name": "f"}]) == "False"  # render(..., tools=...) overrides
    assert render("{{ strftime_now('%Y') }}") in {str(datetime.date.today().year), str(datetime.datetime.now().year)}
    assert render("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "01"
    assert render("  {% if true %}\n  a\n  {% endif %}\n  b") == "  a\n  b"  # trim_blocks, lstrip_blocks
    assert render("{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}") == "True True False"
    assert render("{% generation %}{{ messages | length }}{% endgeneration %}") == "1"
    with pytest.raises(TokenizerError, match="SecurityError|unsafe|access"):
        render("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}")


def test_load_tokenizer_picks_the_kind(tmp_path):
    assert isinstance(load_tokenizer(HF / "qwen2"), ChatTokenizer)
    assert isinstance(load_tokenizer(HF / "chat" / "qwen25"), ChatTokenizer)  # chat_template.jinja only
    toy = Tokenizer.train(["hello world 123"] * 4, vocab_size=140)
    toy.save(tmp_path)
    assert type(load_tokenizer(tmp_path)) is Tokenizer and type(load_tokenizer(tmp_path / "tokenizer.json")) is Tokenizer
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|eos|>"}')  # no template: still the toy
    assert type(load_tokenizer(tmp_path)) is Tokenizer


def edit(tmp_path, **changes) -> Path:
    """A copy of the qwen2 fixture's tokenizer files with {file name (dots as _): new text or None}."""
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(HF / "qwen2" / f, tmp_path / f)
    for key, text in changes.items():
        path = tmp_path / key.replace("_json", ".json").replace("_jinja", ".jinja")
        path.unlink(missing_ok=True) if text is None else path.write_text(text)
    return tmp_path


def config_with(**fields) -> str:
    return json.dumps({**json.loads((HF / "qwen2" / "tokenizer_config.json").read_text()), **fields})


ERRORS = [  # (files changed, the file and field the message names, more text it has)
    ({"tokenizer_json": None}, "tokenizer.json", "file not found"),
    ({"tokenizer_json": "{not json"}, "tokenizer.json", "not a valid tokenizer.json"),
    ({"tokenizer_json": '{"model": 1}'}, "tokenizer.json", "not a valid tokenizer.json"),
    ({"tokenizer_config_json": "{not json"}, "tokenizer_config.json", "not valid JSON"),
    ({"tokenizer_config_json": "[1]"}, "tokenizer_config.json", "not a JSON object"),
    ({"generation_config_json": "{,}"}, "generation_config.json", "not valid JSON"),
    ({"tokenizer_config_json": config_with(chat_template=None)}, "tokenizer_config.json",
     "no 'chat_template' (and no chat_template.jinja): minichord needs one to build prompts"),
    ({"tokenizer_config_json": None}, "tokenizer_config.json", "no 'chat_template'"),
    ({"tokenizer_config_json": config_with(chat_template=[{"name": "rag", "template": "x"}])},
     "tokenizer_config.json", "'chat_template' is a list with no template named 'default'"),
    ({"tokenizer_config_json": config_with(chat_template=3)}, "tokenizer_config.json", "'chat_template' must be"),
    ({"tokenizer_config_json": config_with(eos_token="<|nope|>")}, "tokenizer_config.json",
     "'eos_token' '<|nope|>' is not in the vocabulary"),
    ({"tokenizer_config_json": config_with(pad_token={"content": "<|nope|>"})}, "tokenizer_config.json",
     "'pad_token' '<|nope|>' is not in the vocabulary"),
    ({"tokenizer_config_json": config_with(bos_token=7)}, "tokenizer_config.json", "'bos_token' must be a string"),
    ({"tokenizer_config_json": config_with(eos_token=None), "generation_config_json": "{}"}, "tokenizer_config.json",
     "no 'eos_token'"),
    ({"generation_config_json": '{"eos_token_id": [2, 300]}'}, "generation_config.json",
     "'eos_token_id' [2, 300] is not an id of the vocabulary [0, 300)"),
    ({"generation_config_json": '{"eos_token_id": 2, "pad_token_id": -1}'}, "generation_config.json",
     "'pad_token_id' -1 is not an id"),
    ({"generation_config_json": '{"bos_token_id": "1"}'}, "generation_config.json", "'bos_token_id' '1' is not"),
    ({"chat_template_jinja": "{% for m in messages %}\n{{ m.content }"}, "chat_template.jinja",
     "'chat_template' does not compile: line 2"),
    ({"chat_template_jinja": "{{ raise_exception('only user\nmessages') }}"}, "chat_template.jinja",
     "'chat_template' fails to render 1 message(s) (add_generation_prompt=True): only user messages"),
    ({"tokenizer_config_json": config_with(chat_template="{{ messages[0]['content'] + 1 }}")},
     "tokenizer_config.json", "'chat_template' fails to render 1 message(s) (add_generation_prompt=True): TypeError"),
]


@pytest.mark.parametrize("changes,file,text", ERRORS, ids=[f"{e[1]}: {e[2][:40]}" for e in ERRORS])
def test_errors_name_the_file_and_field_in_one_line(tmp_path, changes, file, text):
    with pytest.raises(TokenizerError) as info:
        ChatTokenizer.from_dir(edit(tmp_path, **changes))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}/{file}: ") and text in message, message


def test_errors_at_use_are_one_line(tmp_path):
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no answers') }}{% endif %}"
                "{{ m['content'] }}{% endfor %}")
    tok = ChatTokenizer.from_dir(edit(tmp_path, chat_template_jinja=template))
    with pytest.raises(TokenizerError, match=r"chat_template.jinja: 'chat_template' fails to render 2 .*: no answers$"):
        tok.encode_example("a", "b")
    not_a_prefix = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    tok = ChatTokenizer.from_dir(edit(tmp_path, chat_template_jinja=not_a_prefix))
    with pytest.raises(TokenizerError, match="does not render the prompt .* as a prefix of the conversation") as info:
        tok.encode_example("a", "b")
    assert "\n" not in str(info.value)
    for bad in ([tok.vocab_size], [-1]):
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode(bad)
    with pytest.raises(TokenizerError, match="takes a str"):
        tok.encode(3)
    with pytest.raises(TokenizerError, match=r"^.*nowhere: not a directory$"):
        ChatTokenizer.from_dir(tmp_path / "nowhere")
