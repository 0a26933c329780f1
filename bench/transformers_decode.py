"""Side-by-side peer for bench/RESULTS.md (issue 6): Hugging Face transformers decoding the same Llama-3-8B shape in
bf16 on the same GPU, eager and static-cache + torch.compile, random weights made on the GPU.

Run on the GPU machine (python3 there has torch and transformers), in the same device call as the Calm bench:

    source .gpu/boot.sh && pwsh -NoProfile -File bench/Gpu.Decode.Bench.ps1 && python3 bench/transformers_decode.py

Prints one line per mode and writes $OUT/transformers-decode.json. The decode time per token is the difference
between a long and a short greedy generation divided by the extra tokens, so prefill and generate()'s fixed
costs cancel; each generation is timed with the GPU synchronised, median of --repeat.
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama3_8b(layers):
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


def timed_generate(model, ids, new_tokens, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return time.perf_counter() - t


def per_token_ms(model, ids, short, long, repeat, **kw):
    for _ in range(2):                                   # warm-up (compilation, CUDA graphs, allocator)
        timed_generate(model, ids, short, **kw)
        timed_generate(model, ids, long, **kw)
    a = statistics.median(timed_generate(model, ids, short, **kw) for _ in range(repeat))
    b = statistics.median(timed_generate(model, ids, long, **kw) for _ in range(repeat))
    return (b - a) / (long - short) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--short", type=int, default=16)
    ap.add_argument("--long", type=int, default=144)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="eager,compiled")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = llama3_8b(args.layers)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), device="cuda")
    # bytes per decoded token: every weight once (embedding: one row) + KV at the mean position of the long run
    emb = model.model.embed_tokens.weight
    kv_per_pos = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    mean_pos = args.prompt + (args.short + args.long) / 2
    token_bytes = weight_bytes - emb.numel() * emb.element_size() + cfg.hidden_size * 2 + kv_per_pos * mean_pos

    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
               "weight_bytes": weight_bytes, "modes": {}}
    with torch.inference_mode():
        for mode in args.modes.split(","):
            if mode == "eager":
                ms = per_token_ms(model, ids, args.short, args.long, args.repeat)
            elif mode == "compiled":
                model.generation_config.cache_implementation = "static"
                model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
                ms = per_token_ms(model, ids, args.short, args.long, args.repeat, cache_implementation="static")
            else:
                raise SystemExit(f"unknown mode {mode}")
            gbps = token_bytes / (ms * 1e-3) / 1e9
            results["modes"][mode] = {"ms_per_token": ms, "tok_per_s": 1e3 / ms, "GBps": gbps}
            print(f"transformers {mode}: {ms:.3f} ms/token, {1e3 / ms:.1f} tok/s, {gbps:.0f} GB/s "
                  f"(Llama-3-8B shape, {args.layers} layers, bf16, prompt {args.prompt})", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "transformers-decode.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
