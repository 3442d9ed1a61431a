"""Check scripts/smollm2_from_gguf.py's output against transformers reading the GGUF file itself.

    python scripts/check_smollm2_against_gguf.py --gguf-dir DIR_WITH_GGUF [--converted DIR]

Needs transformers, gguf, accelerate (transformers wants it for GGUF files) and minichord importable. Compares: every weight tensor (transformers'
GGUF load vs transformers loading the converted directory), logits of both, token ids of varied
texts (transformers' GGUF tokenizer vs the converted tokenizer.json), the rendered chat template,
and minichord's load_hf_model logits vs transformers' on the converted directory.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minichord.hf import load_hf_model  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "Hello world", "What is 12 + 34?", "1234567890", "a  1", "x   22 y", " leading space", "trailing space ",
    "two\nlines\n\nand a blank", "\t tabs\tand  spaces  ", "3.14159 and -42 and 1,000,000", "100%", "¹²³ ½ ٣ 一二三",
    "naïve café — “quotes” ‘single’", "日本語のテキスト", "emoji 🙂👍🏽 done", "don't won't it's I'm we'll they'd",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><repo_name>x<file_sep>",
    "def f(x):\n    return x**2  # square\n", "URL: https://example.com/a?b=1&c=2", "   ", "",
    "Mixed CASE and numbers like A1B2C3", "<|im_end|> not at start <|im_start|>",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}],
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf-dir", type=Path, required=True, help=f"directory holding {GGUF}")
    ap.add_argument("--converted", type=Path, default=Path(os.environ.get("MINICHORD_HOME", Path.home() / ".cache/minichord"))
                    / "smollm2-135m-instruct")
    args = ap.parse_args()
    torch.manual_seed(0)
    g = AutoModelForCausalLM.from_pretrained(args.gguf_dir, gguf_file=GGUF, dtype=torch.float32).eval()
    c = AutoModelForCausalLM.from_pretrained(args.converted, dtype=torch.float32).eval()
    gs, cs = g.state_dict(), c.state_dict()
    assert set(gs) == set(cs), set(gs) ^ set(cs)
    worst = max((gs[k] - cs[k]).abs().max().item() for k in gs)
    exact = sum(torch.equal(gs[k], cs[k]) for k in gs)
    print(f"weights: {exact}/{len(gs)} tensors bit-equal, max |diff| {worst:.3g}")
    print("config diffs:", {k: (v, c.config.to_dict().get(k)) for k, v in g.config.to_dict().items()
                            if c.config.to_dict().get(k) != v and k not in ("_name_or_path", "transformers_version")})

    tg = AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=GGUF)
    tc = AutoTokenizer.from_pretrained(args.converted)
    print("tokenizers:", type(tg).__name__, type(tc).__name__)
    same = 0
    for text in TEXTS:
        a, b = tg.encode(text, add_special_tokens=False), tc.encode(text, add_special_tokens=False)
        same += a == b
        if a != b:
            print(f"  ids differ for {text!r}:\n    gguf      {a} {tg.convert_ids_to_tokens(a)}\n    converted {b} {tc.convert_ids_to_tokens(b)}")
        assert tc.decode(b) == text, (text, tc.decode(b))
    print(f"tokenizer ids: {same}/{len(TEXTS)} texts equal; converted decode(encode(t)) == t for all")
    for chat in CHATS:
        for gen in (True, False):
            ra = tg.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            rb = tc.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert ra == rb, (ra, rb)
    print(f"chat template: {2 * len(CHATS)} renderings identical")
    print("special:", {k: (getattr(tg, k), getattr(tc, k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")})

    start = time.perf_counter()
    m = load_hf_model(args.converted)
    print(f"minichord load_hf_model fp32: {time.perf_counter() - start:.2f} s")
    for i, chat in enumerate(CHATS):
        ids = torch.tensor([tc.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]])
        with torch.no_grad():
            lg, lc, lm = g(ids).logits[0], c(ids).logits[0], m(ids)[0]
        print(f"seq {i} ({ids.shape[1]} tokens): |gguf - converted| {(lg - lc).abs().max():.3g}, "
              f"|minichord - transformers| {(lm - lc).abs().max():.3g}, max |logit| {lc.abs().max():.1f}")


if __name__ == "__main__":
    main()
