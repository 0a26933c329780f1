#!/usr/bin/env python3
"""Reference token ids for Calm's tokenizer tests, made with Hugging Face's `tokenizers` library.

Runs offline (the GPU machine has no network): reads <tokenizers-dir>/<name>/tokenizer.json (or tokenizer.json.gz)
as staged by tools/stage_tokenizers.sh, encodes every line of the corpus (JSON strings, one per line) with and without special
tokens, decodes the ids back, and writes <out>/<name>.ref.json (compact JSON). Copy those files to
tests/fixtures/tokenizers/.

    python3 tools/make_tokenizer_refs.py --tokenizers-dir shared/tokenizers --corpus tools/tokenizer_corpus.jsonl --out "$OUT"
"""
import argparse, gzip, json, os, sys

NAMES = ["llama3_2", "qwen2_5", "qwen3", "gemma2", "mistral_nemo"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizers-dir", required=True)
    ap.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "tokenizer_corpus.jsonl"))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import tokenizers
    from tokenizers import Tokenizer
    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()]
    os.makedirs(args.out, exist_ok=True)
    missing = []
    for name in NAMES:
        path = os.path.join(args.tokenizers_dir, name, "tokenizer.json")
        if os.path.exists(path):
            tok = Tokenizer.from_file(path)
        elif os.path.exists(path + ".gz"):
            with gzip.open(path + ".gz", "rt", encoding="utf-8") as f:
                tok = Tokenizer.from_str(f.read())
        else:
            missing.append(path)
            continue
        cases = []
        for t in texts:
            plain = tok.encode(t, add_special_tokens=False).ids
            special = tok.encode(t, add_special_tokens=True).ids
            cases.append({"text": t, "ids": plain, "ids_special": special,
                          "decoded": tok.decode(special, skip_special_tokens=False),
                          "decoded_skip": tok.decode(special, skip_special_tokens=True)})
        ref = {"tokenizer": name, "generator": f"python tokenizers {tokenizers.__version__}", "cases": cases}
        with open(os.path.join(args.out, f"{name}.ref.json"), "w", encoding="utf-8") as f:
            json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{name}: {len(cases)} cases")
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
