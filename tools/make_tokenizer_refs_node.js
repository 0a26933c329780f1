// Same output as make_tokenizer_refs.py, made with the Rust Hugging Face tokenizers through the npm binding
// @anush008/tokenizers (for machines without Python's `tokenizers`). Usage:
//   npm install --prefix /tmp/hftok @anush008/tokenizers@0.6.0
//   NODE_PATH=/tmp/hftok/node_modules node tools/make_tokenizer_refs_node.js TOKENIZERS_DIR CORPUS OUTDIR
const fs = require('fs'), path = require('path');
const { Tokenizer } = require('@anush008/tokenizers');
const [dir, corpus, out] = process.argv.slice(2);
const texts = fs.readFileSync(corpus, 'utf8').split('\n').filter(l => l.trim()).map(l => JSON.parse(l));
(async () => {
  for (const name of ['llama3_2', 'qwen2_5', 'qwen3', 'gemma2', 'mistral_nemo']) {
    const tok = Tokenizer.fromFile(path.join(dir, name, 'tokenizer.json'));
    const cases = [];
    for (const t of texts) {
      const plain = Array.from((await tok.encode(t, null, { addSpecialTokens: false })).getIds());
      const special = Array.from((await tok.encode(t, null, { addSpecialTokens: true })).getIds());
      cases.push({ text: t, ids: plain, ids_special: special,
        decoded: await tok.decode(special, false), decoded_skip: await tok.decode(special, true) });
    }
    fs.writeFileSync(path.join(out, `${name}.ref.json`),
      JSON.stringify({ tokenizer: name, generator: 'rust tokenizers via npm @anush008/tokenizers 0.6.0', cases }));
    console.log(`${name}: ${cases.length} cases`);
  }
})();
