#!/usr/bin/env python3
"""Trains Calm's embedded default model: a tiny Llama-architecture model with its own byte-level BPE tokenizer,
on War and Peace (public domain) with the Second Epilogue held out.

Run on the GPU machine (torch, transformers, tokenizers; no network):
    python3 tools/train_tiny.py --text .data/war-and-peace.txt --out $OUT/tiny-wp
Writes a normal Hugging Face folder (config.json, model.safetensors in bf16, generation_config.json,
tokenizer.json, tokenizer_config.json with a chat template) plus training.json: the held-out perplexity measured
the way Measure-CalmPerplexity measures it (windows of WINDOW tokens advancing by STRIDE, each window scoring
only its new tokens) and a golden greedy continuation, both from the saved bf16 weights computed in float64.
"""
import argparse, json, math, os, time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers, processors
from transformers import LlamaConfig, LlamaForCausalLM

HOLDOUT_MARK = "SECOND EPILOGUE"
VOCAB = 4096
SEQ = 512
WINDOW, STRIDE = 512, 256
SPECIALS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The split regex of Llama 3 / tiktoken cl100k: contractions, letters, 1-3 digit groups, punctuation, spaces.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] | trim + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
PROMPT = "\"Well, Prince,\" said Anna Pavlovna,"


def make_tokenizer(train_text):
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([train_text[i:i + 100000] for i in range(0, len(train_text), 100000)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


@torch.no_grad()
def perplexity(model, ids, device):
    """Windows of WINDOW tokens advancing by STRIDE; each window scores only the tokens not scored before."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), STRIDE):
        end = min(begin + WINDOW, len(ids))
        x = torch.tensor(ids[begin:end], device=device).unsqueeze(0)
        logits = model(x).logits[0].double()
        logp = torch.log_softmax(logits[:-1], -1)
        targets = x[0, 1:]
        lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        first_new = max(prev_end, begin + 1) - (begin + 1)   # index into lp of the first unscored target
        nll -= float(lp[first_new:].sum())
        count += len(lp) - first_new
        prev_end = end
        if end == len(ids):
            break
    return nll, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2500)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = "cuda"
    text = open(args.text, encoding="utf-8").read()
    cut = text.index(HOLDOUT_MARK)
    train_text, held_text = text[:cut], text[cut:]
    tok = make_tokenizer(train_text)
    train_ids = tok.encode(train_text, add_special_tokens=False).ids
    held_ids = [tok.token_to_id("<s>")] + tok.encode(held_text, add_special_tokens=False).ids
    print(f"train tokens {len(train_ids)} held-out tokens {len(held_ids)}", flush=True)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=SEQ,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    model = LlamaForCausalLM(config).to(device)
    print(f"parameters {sum(p.numel() for p in model.parameters())}", flush=True)
    data = torch.tensor(train_ids, dtype=torch.long, device=device)
    # Validation: the last 5% of the training part (the held-out epilogue stays unseen for the final figure).
    nval = len(data) // 20
    tr, va = data[:-nval], data[-nval:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch = 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps, pct_start=0.05)
    best, best_state, t0 = 1e9, None, time.time()
    for step in range(args.steps):
        model.train()
        ix = torch.randint(0, len(tr) - SEQ - 1, (batch,), device=device)
        x = torch.stack([tr[i:i + SEQ] for i in ix])
        y = torch.stack([tr[i + 1:i + SEQ + 1] for i in ix])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().view(-1, VOCAB), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        if step % max(args.steps // 10, 1) == 0 or step == args.steps - 1:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                vl = []
                for i in range(0, len(va) - SEQ - 1, SEQ * 4):
                    vx = va[i:i + SEQ].unsqueeze(0); vy = va[i + 1:i + SEQ + 1].unsqueeze(0)
                    vl.append(float(F.cross_entropy(model(vx).logits.float().view(-1, VOCAB), vy.view(-1))))
            v = sum(vl) / len(vl)
            print(f"step {step} train {float(loss.detach()):.3f} val {v:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if v < best:
                best, best_state = v, {k: t.detach().clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    model.generation_config.save_pretrained(args.out)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": None, "pad_token": None,
                   "add_bos_token": True, "add_eos_token": False, "model_max_length": SEQ,
                   "clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast",
                   "chat_template": CHAT_TEMPLATE}, fh, indent=1)
    # Reference figures from the SAVED bf16 weights, in float64.
    ref = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float64, attn_implementation="eager").to(device).eval()
    nll, count = perplexity(ref, held_ids, device)
    prompt_ids = tok.encode(PROMPT).ids
    x = torch.tensor(prompt_ids, device=device).unsqueeze(0)
    gen = []
    with torch.no_grad():
        for _ in range(48):
            nxt = int(ref(x).logits[0, -1].argmax())
            gen.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]], device=device)], 1)
    info = {"text": "war-and-peace.txt", "holdout_mark": HOLDOUT_MARK, "holdout_char_offset": cut,
            "holdout_chars": len(held_text), "train_tokens": len(train_ids), "vocab": VOCAB, "seq": SEQ,
            "steps": args.steps, "best_val_loss": best,
            "perplexity": {"window": WINDOW, "stride": STRIDE, "tokens": count, "nll": nll,
                           "mean_nll": nll / count, "ppl": math.exp(nll / count), "add_bos": True},
            "greedy": {"prompt": PROMPT, "prompt_ids": prompt_ids, "ids": gen, "text": tok.decode(gen)}}
    with open(os.path.join(args.out, "training.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(json.dumps(info["perplexity"]), flush=True)
    print("greedy:", PROMPT + tok.decode(gen), flush=True)


if __name__ == "__main__":
    main()
