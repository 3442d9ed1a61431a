"""Pre-training step time of toy v5 (session 5): flush-denormal on/off, then attention as plain matmuls vs SDPA.
Run: python results/toy-v5/bench_pretrain_step.py   (2026-11-27, 2 threads: 84-97 ms/step every way; no gain)"""
import torch, random, dataclasses, time, sys
import torch.nn.functional as F
from minichord.pretrain import PretrainConfig, pad_batch
from minichord.tasks.corpus import pretrain_corpus, style_texts, Sloppy
from minichord.tokenizer import Tokenizer
from minichord.config import ModelConfig
from minichord.model import Transformer
rng = random.Random("minichord-pretrain-0")
tok = Tokenizer.train(style_texts(rng, 2000), vocab_size=ModelConfig().vocab_size)
pairs = pretrain_corpus(rng, 300*64, target_fraction=0.5, target_digits=(1,2), expert_style_digits=(1,3), expert_style_fraction=0.15, easy_fraction=0.4,
                        easy_one_carry=0.3, sentence_share=0.8, sloppy=Sloppy())
ex=[tok.encode_example(p,r) for p,r in pairs]
def bench(flush, start=100, n=60):
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    model=Transformer(dataclasses.replace(ModelConfig(), vocab_size=tok.vocab_size))
    opt=torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9,0.95), weight_decay=0.1)
    def step(i):
        ids, att, lm = pad_batch(ex[i*64:(i+1)*64], tok.pad_id)
        real=att[:, :-1]
        logits=model(ids[:, :-1], attention_mask=real, packed=True)
        scored=lm[:,1:][real]
        loss=F.cross_entropy(logits[scored].float(), ids[:,1:][real][scored])
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    for i in range(start): step(i)
    t=time.perf_counter()
    for i in range(start,start+n): step(i)
    return (time.perf_counter()-t)/n*1000
for f in (False, True, False, True):
    print("flush", f, round(bench(f),1), "ms/step", flush=True)

import minichord.packing as P
orig = torch.nn.functional.scaled_dot_product_attention
def math_sdpa(q, k, v, attn_mask=None, enable_gqa=False):
    B, H, T, hd = q.shape
    Hkv = k.shape[1]; g = H // Hkv
    qg = q.reshape(B, Hkv, g * T, hd)
    s = torch.matmul(qg, k.transpose(-1, -2)) * hd ** -0.5  # [B, Hkv, g*T, T]
    s = s.view(B, Hkv, g, T, T).masked_fill(~attn_mask[:, :, None], float("-inf"))
    p = s.softmax(-1).view(B, Hkv, g * T, T)
    return torch.matmul(p, v).view(B, H, T, hd)
q, k, v = torch.randn(3, 4, 7, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
m = torch.ones(3, 1, 7, 7, dtype=torch.bool).tril(); m[0, :, :, 5:] = False; m[0] |= torch.eye(7, dtype=torch.bool)
print("check", (math_sdpa(q, k, v, attn_mask=m) - orig(q, k, v, attn_mask=m, enable_gqa=True)).abs().max().item())
class FF: pass
F2 = FF(); F2.__dict__.update({k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional) if not k.startswith("__")})
F2.scaled_dot_product_attention = math_sdpa
P.F = F2
for f in (False, False):
    print("math attention", round(bench(f),1), "ms/step", flush=True)
P.F = torch.nn.functional
print("flash again", round(bench(False),1), flush=True)
