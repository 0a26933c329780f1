#!/usr/bin/env python3
"""The side-by-side peer of the performance issue: Hugging Face transformers decoding the same shape on the same GPU.

Run on the GPU machine in the same device call as Calm's measurement (bench/SideBySide.Bench.ps1 does both):
    python3 bench/transformers_peer.py --shape llama-3-8b --out $OUT/transformers.json
Random bf16 weights of the real Llama-3-8B shape (no download), greedy decode of --new tokens after a --prompt-token
prompt, batch 1. Two modes: eager (dynamic cache) and static cache, which transformers' generate() compiles by itself
(torch.compile with CUDA graphs, its own compile_config; wrapping model.forward in torch.compile by hand as well breaks
its CUDA graphs: "accessing tensor output of CUDAGraphs that has been overwritten").
Decode tok/s = (new - 1) / (time(new tokens) - time(1 token)), so prefill and compilation are excluded; median of
--repeat runs after a warm-up that also triggers compilation.
"""
import argparse, json, statistics, time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

SHAPES = {
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def timed_generate(model, ids, n, **kw):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n, out.shape
    return time.perf_counter() - t0


def measure(model, ids, new, repeat, **kw):
    timed_generate(model, ids, new, **kw)      # warm-up (and compilation)
    timed_generate(model, ids, 1, **kw)
    rates = []
    for _ in range(repeat):
        t1 = timed_generate(model, ids, 1, **kw)
        tn = timed_generate(model, ids, new, **kw)
        rates.append((new - 1) / (tn - t1))
    return {"median_tok_s": statistics.median(rates), "min_tok_s": min(rates), "max_tok_s": max(rates),
            "runs": rates}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="eager,static")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape])
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.generation_config.pad_token_id = 0
    ids = torch.randint(1, config.vocab_size, (1, args.prompt_tokens), device="cuda")
    result = {"shape": args.shape, "transformers": transformers.__version__, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new,
              "parameters": sum(p.numel() for p in model.parameters())}
    modes = args.modes.split(",")
    with torch.no_grad():
        if "eager" in modes:
            result["eager"] = measure(model, ids, args.new, args.repeat)
            print("eager", json.dumps(result["eager"]), flush=True)
        if "static" in modes:
            result["static_compiled"] = measure(model, ids, args.new, args.repeat, cache_implementation="static")
            print("static+compile", json.dumps(result["static_compiled"]), flush=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
