// CI: seer-decode's OpenAI-compatible HTTP API (--http) driven by the
// official `openai` npm client, against the real seer-prefill and
// seer-decode on the fixture Llama with its gates (CPU) and its demo
// tokenizer. The
// reference for every reply is `seer run` (the offline path: its own
// tokenization, chat template, contiguous decode and detokenization).
//   node tests/ops/check_openai.mjs BUILD_BIN_DIR
// Exits non-zero naming each check that failed.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import Ajv from 'ajv';

// Child mode (the HTTPS checks below): one model list and one streamed
// completion against BASE_URL; prints what came back, or the error's class.
if (process.argv[2] === '--tls-child') {
  const [, , , baseURL, model, prompt] = process.argv;
  const client = new OpenAI({ baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 60000 });
  try {
    const models = await client.models.list();
    let text = '';
    const stream = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stream: true });
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    console.log(JSON.stringify({ models: models.data.map((m) => m.id), text }));
  } catch (e) {
    console.log(JSON.stringify({ error: e.constructor.name, message: e.message }));
  }
  process.exit(0);
}

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = process.argv[2] ?? join(root, 'build/bin');
const model = join(root, 'tests/fixtures/llama');
const gates = join(root, 'tests/fixtures/llama_gates');
const dir = mkdtempSync(join(tmpdir(), 'seer-openai-'));
const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function start(name, args, ready) {
  const child = spawn(join(bin, name), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${out}`)), 60000);
    const onData = (d) => {
      out += d;
      const m = ready(out);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`${name} exited ${code}:\n${out}`)));
  });
}

const common = ['--metrics', '', '--model', model, '--device', 'cpu'];
const prefill = await start('seer-prefill', ['--listen', '127.0.0.1:0', '--gates', gates, ...common], (out) => {
  const m = out.match(/listening on (\S+)/);
  return m && out.includes(' ready: ') ? m[1] : null;
});
let decodeGrpc = null;  // seer-decode's gRPC address, for seer generate
const http = await start(
  'seer-decode',
  ['--listen', '127.0.0.1:0', '--prefill', prefill, '--http', '127.0.0.1:0', '--tool-call-parser', 'hermes', ...common],
  (out) => {
    const m = out.match(/http on (\S+)/);
    const g = out.match(/listening on (\S+)/);
    if (g) decodeGrpc = g[1];
    return m && out.includes(' ready: ') ? m[1] : null;
  });

// `seer run` greedy: { tokens, text }.
function seerRun(promptArgs, maxNew) {
  const out = execFileSync(join(bin, 'seer'), ['run', '--model', model, '--gates', gates, '--device', 'cpu', '--json',
                                               '--max-new-tokens', String(maxNew), ...promptArgs]);
  return JSON.parse(out.toString());
}

// seer generate over gRPC to the same worker, the prompt below, and `args`.
function seerGenerate(maxNew, args) {
  const out = execFileSync(join(bin, 'seer'), ['generate', '--addr', decodeGrpc, '--prompt', prompt,
                                               '--max-new-tokens', String(maxNew), '--json', ...args]);
  return JSON.parse(out.toString());
}

const failures = [];
function check(what, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok ? '' : `: ${detail}`}`);
  if (!ok) failures.push(what);
}
const same = (what, got, want) =>
  check(what, JSON.stringify(got) === JSON.stringify(want), `got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);

const client = new OpenAI({ baseURL: `http://${http}/v1`, apiKey: 'not-needed', maxRetries: 0, timeout: 60000 });
const name = 'llama';

// Models.
const models = await client.models.list();
same('models.list names the served model', models.data.map((m) => m.id), [name]);

// Completions, whole and streamed.
const prompt = 'one two three four five six seven eight nine ten';
const ref = seerRun(['--prompt', prompt], 24);
check('the completion reference reply has text', ref.text.length > 0, JSON.stringify(ref));
const done = ref.tokens.length < 24 ? 'stop' : 'length';
const c = await client.completions.create({ model: name, prompt, max_tokens: 24, temperature: 0 });
same('completion text equals seer run', c.choices[0].text, ref.text);
same('completion finish_reason', c.choices[0].finish_reason, done);
same('completion usage.completion_tokens', c.usage.completion_tokens, ref.tokens.length);
check('completion usage.prompt_tokens', c.usage.prompt_tokens > 0, JSON.stringify(c.usage));

let streamed = '';
let finish = null;
let usage = null;
const stream = await client.completions.create({
  model: name, prompt, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  for (const choice of chunk.choices) {
    streamed += choice.text ?? '';
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
}
same('streamed completion text equals seer run', streamed, ref.text);
same('streamed completion finish_reason', finish, done);
same('streamed completion usage', usage?.completion_tokens, ref.tokens.length);

// An empty prompt is the BOS alone, as `seer run --prompt ""`.
const emptyRef = seerRun(['--prompt', ''], 8);
const emptyReply = await client.completions.create({ model: name, prompt: '', max_tokens: 8, temperature: 0 });
same('an empty prompt is answered as seer run --prompt ""', emptyReply.choices[0].text, emptyRef.text);

// The same prompt as token ids (`seer tokenize`'s, as the server encodes
// the text): the same reply, in text too.
const ids = JSON.parse(execFileSync(join(bin, 'seer'), ['tokenize', '--tokenizer', model, '--text', prompt, '--json'])
  .toString()).ids;
const byIds = await client.completions.create({ model: name, prompt: ids, max_tokens: 24, temperature: 0 });
same('a prompt of token ids is answered in text', byIds.choices[0].text, ref.text);
same('token-id completion usage.completion_tokens', byIds.usage.completion_tokens, ref.tokens.length);

// n choices: choice i samples with seed + i, so it is the single reply of
// that seed; greedy choices are all the greedy reply; streamed choices
// come apart by index. Usage counts the prompt once.
{
  const sampled = { model: name, prompt, max_tokens: 12, temperature: 1, top_p: 0.9 };
  const three = await client.completions.create({ ...sampled, n: 3, seed: 40 });
  const alone = [];
  for (let i = 0; i < 3; ++i) alone.push(await client.completions.create({ ...sampled, seed: 40 + i }));
  same('n = 3 with seed s: choice i is the reply of seed s + i',
       three.choices.map((x) => [x.index, x.text, x.finish_reason]),
       alone.map((x, i) => [i, x.choices[0].text, x.choices[0].finish_reason]));
  same('n = 3 usage: the prompt once, every choice\'s tokens',
       [three.usage.prompt_tokens, three.usage.completion_tokens],
       [c.usage.prompt_tokens, alone.reduce((sum, x) => sum + x.usage.completion_tokens, 0)]);
  check('the seeds give different replies', new Set(three.choices.map((x) => x.text)).size > 1,
        JSON.stringify(three.choices.map((x) => x.text)));
  const greedyTwo = await client.chat.completions.create({ model: name, messages: [{ role: 'user', content: prompt }],
    max_tokens: 8, temperature: 0, n: 2 });
  same('greedy n = 2 chat choices are the same reply', greedyTwo.choices[0].message.content,
       greedyTwo.choices[1].message.content);
  const byIndex = ['', '', ''];
  const stream = await client.completions.create({ ...sampled, n: 3, seed: 40, stream: true });
  for await (const chunk of stream) for (const c of chunk.choices) byIndex[c.index] += c.text;
  same('streamed n = 3 choices equal the whole ones', byIndex, three.choices.map((c) => c.text));

  // best_of: of the replies of seeds s .. s + 2, the one whose tokens have
  // the highest mean logprob (each reply's own logprobs, asked alone).
  const scored = [];
  for (let i = 0; i < 3; ++i) {
    const r = await client.completions.create({ ...sampled, seed: 40 + i, logprobs: 0 });
    const lps = r.choices[0].logprobs.token_logprobs;
    scored.push([lps.reduce((sum, x) => sum + x, 0) / lps.length, i, r.choices[0].text]);
  }
  scored.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const best = await client.completions.create({ ...sampled, best_of: 3, seed: 40 });
  same('best_of = 3 returns the candidate with the highest logprob per token', best.choices.map((x) => x.text),
       [scored[0][2]]);
  const bestTwo = await client.completions.create({ ...sampled, n: 2, best_of: 3, seed: 40 });
  same('n = 2 of best_of = 3: the best two, best first', bestTwo.choices.map((x) => [x.index, x.text]),
       [[0, scored[0][2]], [1, scored[1][2]]]);
}

// A stop string from the middle of the reference reply cuts the text there.
if (ref.text.length >= 8) {
  const stop = ref.text.slice(Math.floor(ref.text.length / 2), Math.floor(ref.text.length / 2) + 2);
  const cut = await client.completions.create({ model: name, prompt, max_tokens: 24, temperature: 0, stop: [stop] });
  same(`stop ${JSON.stringify(stop)} cuts the text`, cut.choices[0].text, ref.text.slice(0, ref.text.indexOf(stop)));
  same('stop finish_reason', cut.choices[0].finish_reason, 'stop');
} else {
  check('the reference reply is long enough to cut', false, JSON.stringify(ref.text));
}

// OpenAI's logit adjustments, as the official client sends them. ByteLevel
// text is the concatenation of its tokens' texts, so a +100 bias on the
// first greedy token repeats that token's text; -100 bans it.
{
  const first = ref.tokens[0];
  const one = await client.completions.create({ model: name, prompt, max_tokens: 1, temperature: 0 });
  check('the first greedy token has text', one.choices[0].text.length > 0, JSON.stringify(one.choices[0]));
  const forced = await client.completions.create({
    model: name, prompt, max_tokens: 3, temperature: 0, logit_bias: { [first]: 100 },
  });
  same('logit_bias +100 repeats its token', forced.choices[0].text, one.choices[0].text.repeat(3));
  const banned = await client.completions.create({
    model: name, prompt, max_tokens: 1, temperature: 0, logit_bias: { [first]: -100 },
  });
  check('logit_bias -100 bans the greedy token', banned.choices[0].text !== one.choices[0].text,
        JSON.stringify(banned.choices[0].text));
  const penalised = await client.completions.create({
    model: name, prompt, max_tokens: 24, temperature: 0, presence_penalty: 2, frequency_penalty: 2,
  });
  check('penalties change the greedy reply', penalised.choices[0].text !== ref.text, JSON.stringify(penalised));
  try {
    await client.completions.create({ model: name, prompt, max_tokens: 2, presence_penalty: 3 });
    check('presence_penalty 3 is refused', false, 'it was answered');
  } catch (e) {
    same('presence_penalty 3 is a 400 naming it', [e.status, e.param], [400, 'presence_penalty']);
  }
}

// vLLM's extensions, as clients written for vLLM send them through the
// official client: top_k 1 samples the greedy reply; stop_token_ids ends the
// reply at that token, leaving its text out (as vLLM does); min_p and
// repetition_penalty; a value out of range, or a control Seer lacks, is a
// 400 naming it.
{
  const topK = await client.completions.create({
    model: name, prompt, max_tokens: 24, temperature: 1, seed: 7, top_k: 1,
  });
  same('top_k 1 samples the greedy reply', topK.choices[0].text, ref.text);
  const k = ref.tokens.findIndex((t, i) => i >= 1 && !ref.tokens.slice(0, i).includes(t));
  if (k >= 1 && k < ref.tokens.length - 1) {
    const head = JSON.parse(execFileSync(join(bin, 'seer'), ['detokenize', '--tokenizer', model, '--ids',
      ref.tokens.slice(0, k).join(','), '--skip-special-tokens', '--json']).toString()).text;
    const stopped = await client.completions.create({
      model: name, prompt, max_tokens: 24, temperature: 0, stop_token_ids: [ref.tokens[k]],
    });
    same('stop_token_ids ends the reply at that token, without its text',
         [stopped.choices[0].text, stopped.choices[0].finish_reason, stopped.usage.completion_tokens],
         [head, 'stop', k + 1]);
  } else {
    check('the reference reply has a token to stop at', false, JSON.stringify(ref.tokens));
  }
  // min_tokens: the stop token cannot come before that many tokens; until
  // then the reply is the one with that token banned (logit_bias -100).
  if (k >= 1 && k < ref.tokens.length - 1) {
    const min = k + 2;
    const held = await client.completions.create({
      model: name, prompt, max_tokens: min, temperature: 0, logit_bias: { [ref.tokens[k]]: -100 },
    });
    const longer = await client.completions.create({
      model: name, prompt, max_tokens: 24, temperature: 0, stop_token_ids: [ref.tokens[k]], min_tokens: min,
    });
    check('min_tokens holds the stop token off for its tokens',
          longer.usage.completion_tokens >= min && longer.choices[0].text.startsWith(held.choices[0].text),
          JSON.stringify([longer.choices[0], longer.usage, held.choices[0].text]));
  }
  // ignore_eos: with the end-of-text id (2) forced by a bias, a reply ends at
  // once; with ignore_eos it goes on to max_tokens (the id has no text).
  {
    const eos = { model: name, prompt, max_tokens: 5, temperature: 0, logit_bias: { 2: 100 } };
    const ended = await client.completions.create(eos);
    same('a forced end-of-text ends the reply', [ended.usage.completion_tokens, ended.choices[0].finish_reason],
         [1, 'stop']);
    const went = await client.completions.create({ ...eos, ignore_eos: true });
    same('ignore_eos goes on past end-of-text',
         [went.usage.completion_tokens, went.choices[0].finish_reason, went.choices[0].text], [5, 'length', '']);
  }
  // repetition_penalty: the greedy reply of `seer run --repetition-penalty`
  // (the prompt's tokens count as seen); min_p 1 keeps only the most likely
  // token, so at a temperature it samples the greedy reply.
  const repeated = await client.completions.create({
    model: name, prompt, max_tokens: 24, temperature: 0, repetition_penalty: 1.5,
  });
  check('repetition_penalty 1.5 changes the greedy reply', repeated.choices[0].text !== ref.text,
        JSON.stringify(repeated.choices[0].text));
  same('repetition_penalty 1.5 reply equals seer run --repetition-penalty 1.5', repeated.choices[0].text,
       seerRun(['--prompt', prompt, '--repetition-penalty', '1.5'], 24).text);
  const minP = await client.completions.create({
    model: name, prompt, max_tokens: 24, temperature: 1, seed: 3, min_p: 1,
  });
  same('min_p 1 samples the greedy reply', minP.choices[0].text, ref.text);
  // include_stop_str_in_output keeps the stop string at the end of the
  // text; skip_special_tokens false keeps a special token's text (id 0,
  // <|begin_of_text|>, forced by a bias).
  {
    const mid = Math.floor(ref.text.length / 2);
    const stopStr = ref.text.slice(mid, mid + 2);
    const cut = await client.completions.create({
      model: name, prompt, max_tokens: 24, temperature: 0, stop: [stopStr], include_stop_str_in_output: true,
    });
    same('include_stop_str_in_output keeps the stop string', [cut.choices[0].text, cut.choices[0].finish_reason],
         [ref.text.slice(0, ref.text.indexOf(stopStr) + stopStr.length), 'stop']);
    const special = JSON.parse(execFileSync(join(bin, 'seer'), ['detokenize', '--tokenizer', model, '--ids', '0',
      '--json']).toString()).text;
    const forcedSpecial = { model: name, prompt, max_tokens: 3, temperature: 0, logit_bias: { 0: 100 } };
    const skipped = await client.completions.create(forcedSpecial);
    const kept = await client.completions.create({ ...forcedSpecial, skip_special_tokens: false });
    same('skip_special_tokens false keeps a special token\'s text', [skipped.choices[0].text, kept.choices[0].text],
         ['', special.repeat(3)]);
  }
  // bad_words: vLLM's rule written out here over `seer tokenize` (the word,
  // and after a space when that starts with another token and is as long).
  // For words of the reference reply, the HTTP reply is seer generate's over
  // gRPC, and no banned sequence is in its tokens.
  {
    const encode = (text) => JSON.parse(execFileSync(join(bin, 'seer'), ['tokenize', '--tokenizer', model, '--text',
      text, '--add-special-tokens=false', '--json']).toString()).ids;
    const decode = (ids) => JSON.parse(execFileSync(join(bin, 'seer'), ['detokenize', '--tokenizer', model, '--ids',
      ids.join(','), '--json']).toString()).text;
    const words = [decode(ref.tokens.slice(1, 3)), decode(ref.tokens.slice(4, 5))];
    const banned = [];
    for (const w of words.map((x) => x.trimStart())) {
      const plain = encode(w), spaced = encode(` ${w}`);
      banned.push(plain);
      if (spaced[0] !== plain[0] && spaced.length === plain.length) banned.push(spaced);
    }
    const worded = await client.completions.create({
      model: name, prompt, max_tokens: 24, temperature: 0, bad_words: words,
    });
    const cli = seerGenerate(24, words.flatMap((w) => ['--bad-word', w]));
    same(`bad_words ${JSON.stringify(words)} over HTTP equals seer generate --bad-word`, worded.choices[0].text, cli.text);
    const has = (seq) => cli.tokens.some((_, i) => seq.every((t, j) => cli.tokens[i + j] === t));
    check('no banned sequence is in the reply', !banned.some(has), JSON.stringify({ banned, tokens: cli.tokens }));
  }
  // allowed_token_ids: two tokens of the reference reply; the HTTP reply is
  // seer generate's with the same list, whose tokens are all among them.
  {
    const allowed = [ref.tokens[1], ref.tokens[4]];
    const only = await client.completions.create({
      model: name, prompt, max_tokens: 12, temperature: 1, seed: 5, allowed_token_ids: allowed,
    });
    const cli = seerGenerate(12, ['--temperature', '1', '--seed', '5', '--allowed-token-ids', allowed.join(',')]);
    same('allowed_token_ids over HTTP equals seer generate --allowed-token-ids', only.choices[0].text, cli.text);
    check('... whose tokens are all allowed', cli.tokens.length > 0 && cli.tokens.every((t) => allowed.includes(t)),
          JSON.stringify(cli.tokens));
  }
  // Guided decoding. The references: Ajv (a JSON Schema validator) for
  // every JSON reply, JavaScript's RegExp for guided_regex, the list for
  // guided_choice; and each HTTP reply equals seer generate's over gRPC with
  // the same guide and seed.
  {
    const schema = {
      type: 'object',
      properties: {
        name: { type: 'string', maxLength: 12 },
        age: { type: 'integer', minimum: 0 },
        tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 3 },
        pet: { anyOf: [{ type: 'null' }, { type: 'object', properties: { kind: { type: 'string', maxLength: 6 } },
                                             required: ['kind'] }] },
      },
      required: ['name', 'age'],
      additionalProperties: false,
    };
    const validate = new Ajv({ strict: false }).compile(schema);
    const parsed = (text) => { try { return { ok: true, value: JSON.parse(text) }; } catch { return { ok: false }; } };
    let whole = 0;
    for (const seed of [1, 2, 3]) {
      const chat = await client.chat.completions.create({
        model: name, messages: [{ role: 'user', content: 'Describe a person as JSON.' }], max_tokens: 200,
        temperature: 1, seed, response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
      });
      const c = chat.choices[0];
      if (c.finish_reason === 'stop') {
        ++whole;
        const v = parsed(c.message.content);
        check(`response_format json_schema (seed ${seed}): Ajv accepts the reply`, v.ok && validate(v.value),
              JSON.stringify({ content: c.message.content, errors: validate.errors }));
      }
      const completion = await client.completions.create({
        model: name, prompt, max_tokens: 200, temperature: 1, seed, guided_json: schema,
      });
      const cli = seerGenerate(200, ['--temperature', '1', '--seed', String(seed), '--json-schema',
                                     JSON.stringify(schema)]);
      same(`guided_json (seed ${seed}) over HTTP equals seer generate --json-schema`, completion.choices[0].text, cli.text);
      if (completion.choices[0].finish_reason === 'stop') {
        ++whole;
        const v = parsed(completion.choices[0].text);
        check(`guided_json (seed ${seed}): Ajv accepts the reply`, v.ok && validate(v.value),
              JSON.stringify({ text: completion.choices[0].text, errors: validate.errors }));
      }
    }
    check('most JSON replies are whole within 200 tokens', whole >= 4, String(whole));
    // Greedy, against the offline path: seer run's own sampler, tokenizer
    // and guide on the monolithic engine.
    const greedy = await client.completions.create({ model: name, prompt, max_tokens: 120, temperature: 0,
                                                     guided_json: schema });
    const offline = seerRun(['--prompt', prompt, '--json-schema', JSON.stringify(schema)], 120);
    same('greedy guided_json over HTTP equals seer run --json-schema', greedy.choices[0].text, offline.text);
    const object = await client.chat.completions.create({
      model: name, messages: [{ role: 'user', content: 'JSON please' }], max_tokens: 200, temperature: 1, seed: 9,
      response_format: { type: 'json_object' },
    });
    if (object.choices[0].finish_reason === 'stop') {
      const v = parsed(object.choices[0].message.content);
      check('response_format json_object: a JSON object', v.ok && v.value !== null && typeof v.value === 'object' &&
            !Array.isArray(v.value), object.choices[0].message.content);
    }
    const regex = '[0-9]{3}-(red|green|blue)( [a-z]{1,5}){0,2}';
    for (const seed of [4, 5]) {
      const r = await client.completions.create({ model: name, prompt, max_tokens: 40, temperature: 1, seed,
                                                   guided_regex: regex });
      const cli = seerGenerate(40, ['--temperature', '1', '--seed', String(seed), '--regex', regex]);
      same(`guided_regex (seed ${seed}) over HTTP equals seer generate --regex`, r.choices[0].text, cli.text);
      if (seed === 4) {
        const g = await client.completions.create({ model: name, prompt, max_tokens: 40, temperature: 0,
                                                    guided_regex: regex });
        same('greedy guided_regex over HTTP equals seer run --regex', g.choices[0].text,
             seerRun(['--prompt', prompt, '--regex', regex], 40).text);
      }
      check(`guided_regex (seed ${seed}): RegExp matches the whole reply`,
            r.choices[0].finish_reason === 'stop' && new RegExp(`^(?:${regex})$`).test(r.choices[0].text),
            JSON.stringify(r.choices[0]));
    }
    // guided_grammar: a GBNF grammar (recursive: nested lists), judged by a
    // recogniser written here.
    const gbnf = 'root ::= list\nlist ::= "[" (item ("," item){0,2})? "]"\nitem ::= [0-9]{1,2} | list\n';
    const isList = (text) => {
      let at = 0;
      const list = (depth) => {
        if (depth > 50 || text[at] !== '[') return false;
        at += 1;
        if (text[at] === ']') { at += 1; return true; }
        for (let n = 0; n < 3; n += 1) {
          if (text[at] === '[') {
            if (!list(depth + 1)) return false;
          } else {
            const digits = /^[0-9]{1,2}/.exec(text.slice(at));
            if (!digits || /^[0-9]/.test(text.slice(at + digits[0].length))) return false;
            at += digits[0].length;
          }
          if (text[at] === ']') { at += 1; return true; }
          if (text[at] !== ',' || n === 2) return false;
          at += 1;
        }
        return false;
      };
      return list(0) && at === text.length;
    };
    for (const seed of [7, 8]) {
      const r = await client.completions.create({ model: name, prompt, max_tokens: 60, temperature: 1, seed,
                                                   guided_grammar: gbnf });
      const cli = seerGenerate(60, ['--temperature', '1', '--seed', String(seed), '--grammar', gbnf]);
      same(`guided_grammar (seed ${seed}) over HTTP equals seer generate --grammar`, r.choices[0].text, cli.text);
      if (r.choices[0].finish_reason === 'stop') {
        check(`guided_grammar (seed ${seed}): the recogniser accepts the whole reply`, isList(r.choices[0].text),
              r.choices[0].text);
      }
    }
    const viaStructured = await client.chat.completions.create({
      model: name, messages: [{ role: 'user', content: 'A list?' }], max_tokens: 60, temperature: 0,
      structured_outputs: { grammar: gbnf },
    });
    if (viaStructured.choices[0].finish_reason === 'stop') {
      check('structured_outputs grammar: the recogniser accepts the reply', isList(viaStructured.choices[0].message.content),
            viaStructured.choices[0].message.content);
    }
    same('greedy guided_grammar over HTTP equals seer run --grammar',
         (await client.completions.create({ model: name, prompt, max_tokens: 60, temperature: 0,
                                            guided_grammar: gbnf })).choices[0].text,
         seerRun(['--prompt', prompt, '--grammar', gbnf], 60).text);
    const choices = ['positive', 'negative', 'no opinion'];
    const picked = await client.chat.completions.create({
      model: name, messages: [{ role: 'user', content: 'Sentiment?' }], max_tokens: 20, temperature: 1, seed: 6,
      structured_outputs: { choice: choices },
    });
    check('structured_outputs choice: one of the choices', choices.includes(picked.choices[0].message.content),
          picked.choices[0].message.content);
    const cli = seerGenerate(20, ['--temperature', '1', '--seed', '6', ...choices.flatMap((c) => ['--choice', c])]);
    check('seer generate --choice: one of the choices', choices.includes(cli.text), cli.text);
  }
  for (const [field, value] of [['min_p', 1.5], ['repetition_penalty', 0], ['guided_grammar', 'root ::= a']]) {
    try {
      await client.completions.create({ model: name, prompt, max_tokens: 2, [field]: value });
      check(`${field} ${JSON.stringify(value)} is refused`, false, 'it was answered');
    } catch (e) {
      same(`${field} ${JSON.stringify(value)} is a 400 naming it`, [e.status, e.param], [400, field]);
    }
  }
}

// Tool calling on POST /v1/chat/completions. The tools: a weather tool
// whose schema bounds its arguments (so the random model finishes them
// within max_tokens) and a clock tool, so that "required" has a choice. The
// references: a named function's arguments are the text of `seer generate
// --chat --tools --json-schema` over gRPC with the tool's parameters (the
// same guide and seed), and Ajv validates every call's arguments against
// its tool's parameters; a streamed reply, read by the SDK's stream helper,
// makes the same calls as the whole reply of its seed. "auto" (read in
// Hermes format, seer-decode --tool-call-parser hermes) and "none" read a
// text forced by guided_regex: the raw text is `seer generate --regex`'s,
// which JavaScript's RegExp matches whole, split here at its <tool_call>
// tags. A round trip through a tool turn is answered as `seer run --chat
// --tools` answers it offline (the fixture's template prints each turn's
// role and content). Errors come back as the SDK's typed errors.
{
  const weather = {
    type: 'object',
    properties: { city: { type: 'string', maxLength: 8 }, unit: { enum: ['celsius', 'fahrenheit'] } },
    required: ['city', 'unit'],
    additionalProperties: false,
  };
  const clock = {
    type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'], additionalProperties: false,
  };
  const tools = [
    { type: 'function', function: { name: 'get_weather', description: 'The weather in a city.', parameters: weather } },
    { type: 'function', function: { name: 'get_time', description: 'The time in a zone.', parameters: clock } },
  ];
  const ajv = new Ajv({ strict: false });
  const validators = { get_weather: ajv.compile(weather), get_time: ajv.compile(clock) };
  // Whether a call names an offered tool and Ajv accepts its arguments.
  const validCall = (call) => {
    const validate = validators[call?.function?.name];
    if (!validate) return false;
    try {
      return validate(JSON.parse(call.function.arguments));
    } catch {
      return false;
    }
  };
  const callId = /^call_[A-Za-z0-9]{24}$/;
  // A reply's calls as [name, arguments] (ids differ from reply to reply).
  const callsOf = (reply) => (reply.choices[0].message.tool_calls ?? []).map((t) => [t.function.name,
                                                                                      t.function.arguments]);
  const asked = [{ role: 'user', content: 'What is the weather in Rome?' }];
  const files = { asked: join(dir, 'asked.json'), tools: join(dir, 'tools.json'), weather: join(dir, 'weather.json') };
  writeFileSync(files.asked, JSON.stringify(asked));
  writeFileSync(files.tools, JSON.stringify(tools));
  writeFileSync(files.weather, JSON.stringify(weather));
  const maxTokens = 200;
  // seer generate over gRPC: the asked chat with the tools, and `args`.
  const generateChat = (maxNew, args) => JSON.parse(execFileSync(join(bin, 'seer'), [
    'generate', '--addr', decodeGrpc, '--chat', files.asked, '--tools', `@${files.tools}`,
    '--max-new-tokens', String(maxNew), '--json', ...args]).toString());
  const base = { model: name, messages: asked, tools, max_tokens: maxTokens, temperature: 1 };

  // A named function: the reply is guided to its parameters and is the
  // call's arguments; content is null.
  const named = { ...base, tool_choice: { type: 'function', function: { name: 'get_weather' } } };
  const namedReplies = {};
  for (const seed of [1, 2]) {
    const r = await client.chat.completions.create({ ...named, seed });
    namedReplies[seed] = r;
    const c = r.choices[0];
    const call = c.message.tool_calls?.[0];
    same(`named tool_choice (seed ${seed}): content null, one call of get_weather`,
         [c.message.content, c.message.tool_calls?.length, call?.type, call?.function?.name],
         [null, 1, 'function', 'get_weather']);
    check(`named tool_choice (seed ${seed}): the call's id is call_ and 24 letters or digits`, callId.test(call?.id),
          JSON.stringify(call?.id));
    const cli = generateChat(maxTokens, ['--json-schema', `@${files.weather}`, '--temperature', '1', '--seed',
                                         String(seed)]);
    same(`named tool_choice (seed ${seed}): the arguments equal seer generate --tools --json-schema`,
         call?.function?.arguments, cli.text);
    same(`named tool_choice (seed ${seed}) finish_reason`, c.finish_reason, 'stop');
    if (c.finish_reason === 'stop') {
      check(`named tool_choice (seed ${seed}): Ajv accepts the arguments`, validCall(call),
            JSON.stringify({ call, errors: validators.get_weather.errors }));
    }

    // Streamed: the SDK's helper assembles the same call; the raw chunks
    // name the call once (the first delta: index 0, id, type, name), then
    // carry only argument fragments, which join to the same text.
    const final = await client.chat.completions.stream({ ...named, seed }).finalChatCompletion();
    same(`streamed named tool_choice (seed ${seed}) via stream(): the same call and finish_reason`,
         [callsOf(final), final.choices[0].finish_reason], [callsOf(r), c.finish_reason]);
    check(`streamed named tool_choice (seed ${seed}) via stream(): an id of its own`,
          callId.test(final.choices[0].message.tool_calls?.[0]?.id) &&
            final.choices[0].message.tool_calls[0].id !== call?.id,
          JSON.stringify(final.choices[0].message.tool_calls));
    const deltas = [];
    let streamedContent = '';
    const raw = await client.chat.completions.create({ ...named, seed, stream: true });
    for await (const chunk of raw) {
      streamedContent += chunk.choices[0]?.delta?.content ?? '';
      deltas.push(...(chunk.choices[0]?.delta?.tool_calls ?? []));
    }
    const heads = deltas.filter((d) => d.id !== undefined || d.type !== undefined || d.function?.name !== undefined);
    const head = deltas[0];
    check(`raw streamed named tool_choice (seed ${seed}): exactly one delta names the call, the first`,
          heads.length === 1 && heads[0] === head && head.index === 0 && callId.test(head.id) &&
            head.type === 'function' && head.function?.name === 'get_weather' &&
            typeof head.function?.arguments === 'string',
          JSON.stringify(deltas));
    check(`raw streamed named tool_choice (seed ${seed}): later deltas are {index 0, function: {arguments}}`,
          deltas.slice(1).every((d) => JSON.stringify(Object.keys(d).sort()) === '["function","index"]' &&
            d.index === 0 && JSON.stringify(Object.keys(d.function)) === '["arguments"]'),
          JSON.stringify(deltas));
    same(`raw streamed named tool_choice (seed ${seed}): the fragments join to the arguments, no content`,
         [deltas.map((d) => d.function?.arguments ?? '').join(''), streamedContent], [call?.function?.arguments, '']);
  }

  // "required": a JSON array of calls of the offered tools (exactly one
  // with parallel_tool_calls false), each call's arguments its element's
  // parameters in compact JSON; finish_reason "tool_calls". The reference
  // is seer generate guided by that array's schema, written here.
  const required = { ...base, tool_choice: 'required' };
  const arraySchema = (parallel) => ({
    type: 'array',
    items: {
      anyOf: tools.map((t) => ({
        type: 'object',
        properties: { name: { const: t.function.name }, parameters: t.function.parameters },
        required: ['name', 'parameters'],
        additionalProperties: false,
      })),
    },
    minItems: 1,
    ...(parallel ? {} : { maxItems: 1 }),
  });
  for (const [seed, parallel] of [[1, true], [2, true], [1, false]]) {
    const ask = { ...required, seed, ...(parallel ? {} : { parallel_tool_calls: false }) };
    const what = `tool_choice required (seed ${seed}${parallel ? '' : ', parallel_tool_calls false'})`;
    const r = await client.chat.completions.create(ask);
    const c = r.choices[0];
    const calls = c.message.tool_calls ?? [];
    same(`${what} finish_reason`, c.finish_reason, 'tool_calls');
    if (c.finish_reason === 'tool_calls') {
      check(`${what}: ${parallel ? 'one or more calls' : 'exactly one call'}, content null`,
            (parallel ? calls.length >= 1 : calls.length === 1) && c.message.content === null,
            JSON.stringify(c.message));
      check(`${what}: every call names a tool and Ajv accepts its arguments`,
            calls.every((t) => t.type === 'function' && callId.test(t.id) && validCall(t)), JSON.stringify(calls));
    }
    const cli = generateChat(maxTokens, ['--json-schema', JSON.stringify(arraySchema(parallel)), '--temperature', '1',
                                         '--seed', String(seed)]);
    // The arguments are the model's own text: each is in the reference's
    // text, and reads as its element's parameters.
    let want = null;
    try {
      want = JSON.parse(cli.text).map((e) => [e.name, JSON.stringify(e.parameters)]);
    } catch {
      want = cli.text;
    }
    const read = callsOf(r).map(([n, a]) => {
      try {
        return [n, JSON.stringify(JSON.parse(a))];
      } catch {
        return [n, a];
      }
    });
    same(`${what}: the calls are the elements of seer generate --json-schema <the array>`, read, want);
    check(`${what}: each call's arguments are the reference text's own`,
          callsOf(r).every(([, a]) => cli.text.includes(a)), JSON.stringify({ calls: callsOf(r), text: cli.text }));
    const final = await client.chat.completions.stream(ask).finalChatCompletion();
    same(`streamed ${what} via stream(): the same calls and finish_reason`,
         [callsOf(final), final.choices[0].finish_reason], [callsOf(r), c.finish_reason]);
  }

  // "auto" with the Hermes parser, and "none": the text forced by
  // guided_regex, as seer generate --regex writes it for the same seed.
  const hermes = 'Checking\\. <tool_call>\\{"name": "get_weather", "arguments": \\{"city": "(Rome|Oslo)", ' +
                 '"unit": "celsius"\\}\\}</tool_call>';
  const forced = generateChat(maxTokens, ['--regex', hermes, '--temperature', '1', '--seed', '4']);
  check('seer generate --regex writes a Hermes call that RegExp matches whole',
        new RegExp(`^(?:${hermes})$`).test(forced.text), JSON.stringify(forced.text));
  const at = forced.text.indexOf('<tool_call>');
  const wantContent = forced.text.slice(0, at);
  const inside = forced.text.slice(at + '<tool_call>'.length, forced.text.lastIndexOf('</tool_call>'));
  let wantArguments = null;
  try {
    wantArguments = JSON.parse(inside).arguments;
  } catch {
    check('the regex text\'s call is JSON', false, JSON.stringify(inside));
  }
  const readCall = (reply) => {
    const calls = reply.choices[0].message.tool_calls ?? [];
    let args;
    try {
      args = JSON.parse(calls[0]?.function?.arguments);
    } catch {
      args = null;
    }
    return [reply.choices[0].message.content, calls.length, calls[0]?.function?.name, args,
            reply.choices[0].finish_reason];
  };
  const wantCall = ['Checking. ', 1, 'get_weather', wantArguments, 'tool_calls'];
  same('the regex text\'s content is "Checking. "', wantContent, 'Checking. ');
  const auto = await client.chat.completions.create({ ...base, seed: 4, guided_regex: hermes });
  same('tool_choice auto (the default) reads the Hermes call: content, the call, finish_reason tool_calls',
       readCall(auto), wantCall);
  check('tool_choice auto: the call\'s id is call_ and 24 letters or digits',
        callId.test(auto.choices[0].message.tool_calls?.[0]?.id), JSON.stringify(auto.choices[0].message));
  const autoStreamed = await client.chat.completions.stream({ ...base, seed: 4, tool_choice: 'auto',
                                                               guided_regex: hermes }).finalChatCompletion();
  same('streamed tool_choice auto via stream(): the same content, call and finish_reason', readCall(autoStreamed),
       wantCall);
  const none = await client.chat.completions.create({ ...base, seed: 4, tool_choice: 'none', guided_regex: hermes });
  same('tool_choice none: the whole text is content, no calls',
       [none.choices[0].message.content, none.choices[0].message.tool_calls, none.choices[0].finish_reason],
       [forced.text, undefined, 'stop']);
  const plain = 'It is (sunny|rainy)\\.';
  const plainText = generateChat(maxTokens, ['--regex', plain, '--temperature', '1', '--seed', '4']).text;
  check('seer generate --regex writes a plain text that RegExp matches whole',
        new RegExp(`^(?:${plain})$`).test(plainText), JSON.stringify(plainText));
  const text = await client.chat.completions.create({ ...base, seed: 4, guided_regex: plain });
  same('tool_choice auto on plain text: that text as content, no calls, finish_reason stop',
       [text.choices[0].message.content, text.choices[0].message.tool_calls, text.choices[0].finish_reason],
       [plainText, undefined, 'stop']);

  // A round trip: the assistant message as the SDK returned it (with its
  // tool_calls) and a tool turn answering it; the greedy reply is seer
  // run's on the same messages and tools, offline. "auto" with the Hermes
  // parser keeps special tokens in the text (as vLLM's parser asks, since
  // some checkpoints make <tool_call> one), so the reply that leaves them
  // out, as seer run does, is asked for; the one that keeps them is seer
  // generate --keep-special-tokens's.
  const assistant = namedReplies[1].choices[0].message;
  const trip = [...asked, assistant,
                { role: 'tool', tool_call_id: assistant.tool_calls?.[0]?.id, content: '{"temp": 21}' }];
  writeFileSync(join(dir, 'trip.json'), JSON.stringify(trip));
  const tripRef = seerRun(['--chat', join(dir, 'trip.json'), '--tools', `@${files.tools}`], maxTokens);
  check('the round trip reference reply has text', tripRef.text.length > 0, JSON.stringify(tripRef));
  const tripAsk = { model: name, messages: trip, tools, max_tokens: maxTokens, temperature: 0 };
  const back = await client.chat.completions.create({ ...tripAsk, skip_special_tokens: true });
  same('a round trip through a tool turn is answered as seer run --chat --tools',
       [back.choices[0].message.content, back.choices[0].message.tool_calls, back.choices[0].finish_reason],
       [tripRef.text, undefined, tripRef.tokens.length < maxTokens ? 'stop' : 'length']);
  const kept = await client.chat.completions.create(tripAsk);
  const keptRef = JSON.parse(execFileSync(join(bin, 'seer'), [
    'generate', '--addr', decodeGrpc, '--chat', join(dir, 'trip.json'), '--tools', `@${files.tools}`,
    '--max-new-tokens', String(maxTokens), '--keep-special-tokens', '--json']).toString());
  same('the round trip keeps special tokens under the Hermes parser, as seer generate --keep-special-tokens',
       kept.choices[0].message.content, keptRef.text);

  // Errors.
  await expectError('tool_choice naming an unknown function is BadRequestError 400 naming tool_choice.function.name',
                    () => client.chat.completions.create({ ...base, max_tokens: 4,
                      tool_choice: { type: 'function', function: { name: 'get_stock' } } }),
                    OpenAI.BadRequestError, 400, 'tool_choice.function.name');
  await expectError('tool_choice required with response_format json_object is BadRequestError 400 naming tool_choice',
                    () => client.chat.completions.create({ ...required, max_tokens: 4,
                      response_format: { type: 'json_object' } }),
                    OpenAI.BadRequestError, 400, 'tool_choice');
  await expectError('tools on a completion are BadRequestError 400 naming tools',
                    () => client.completions.create({ model: name, prompt, max_tokens: 4, tools }),
                    OpenAI.BadRequestError, 400, 'tools');
  await expectError('a tool named with a space is BadRequestError 400 naming tools[0].function.name',
                    () => client.chat.completions.create({ ...base, max_tokens: 4,
                      tools: [{ type: 'function', function: { name: 'get weather', parameters: weather } }] }),
                    OpenAI.BadRequestError, 400, 'tools[0].function.name');
}

// vLLM's /tokenize and /detokenize (at the root; plain HTTP, as vLLM's own
// clients call them) against `seer tokenize` and `seer detokenize`.
{
  const post = async (path, body) => {
    const r = await fetch(`http://${http}${path}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    return [r.status, await r.json()];
  };
  const want = JSON.parse(execFileSync(join(bin, 'seer'), ['tokenize', '--tokenizer', model, '--text', prompt,
    '--json']).toString()).ids;
  const [status, got] = await post('/tokenize', { model: name, prompt });
  same('/tokenize equals seer tokenize', [status, got.tokens, got.count], [200, want, want.length]);
  const text = JSON.parse(execFileSync(join(bin, 'seer'), ['detokenize', '--tokenizer', model, '--ids',
    want.join(','), '--json']).toString()).text;
  const [dstatus, back] = await post('/detokenize', { model: name, tokens: want });
  same('/detokenize equals seer detokenize', [dstatus, back.prompt], [200, text]);
  const [bad, err] = await post('/detokenize', { tokens: [-1] });
  same('/detokenize of -1 is a 400 naming tokens', [bad, err.error?.param], [400, 'tokens']);
}

// A batch of prompts in one completion (as lm-evaluation-harness sends
// them): choice i answers prompt i as that prompt alone is answered, and
// usage counts every prompt; a batch of token-id prompts scored with echo,
// max_tokens 0 and logprobs, each equal to its prompt scored alone.
{
  const other = 'the cat sat on the mat';
  const one = await client.completions.create({ model: name, prompt, max_tokens: 24, temperature: 0 });
  const two = await client.completions.create({ model: name, prompt: other, max_tokens: 24, temperature: 0 });
  const batch = await client.completions.create({ model: name, prompt: [prompt, other], max_tokens: 24, temperature: 0 });
  same('a batch of two prompts answers each as alone', batch.choices.map((c) => [c.index, c.text]),
       [[0, ref.text], [1, two.choices[0].text]]);
  same('... and its usage counts both', batch.usage.prompt_tokens, one.usage.prompt_tokens + two.usage.prompt_tokens);
  const score = (p) => client.completions.create({ model: name, prompt: p, max_tokens: 0, echo: true, logprobs: 1 });
  const ids = [ref.tokens.slice(0, 6), ref.tokens.slice(3, 12)];
  const scored = await score(ids);
  const alone = [await score(ids[0]), await score(ids[1])];
  same('a batch of id prompts scored with echo equals each scored alone',
       scored.choices.map((c) => c.logprobs.token_logprobs), alone.map((a) => a.choices[0].logprobs.token_logprobs));
}

// Chat, whole and streamed, through the model's chat template.
const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'name three colours' }];
writeFileSync(join(dir, 'chat.json'), JSON.stringify(messages));
const chatRef = seerRun(['--chat', join(dir, 'chat.json')], 12);
check('the chat reference reply has text', chatRef.text.length > 0, JSON.stringify(chatRef));
const chat = await client.chat.completions.create({ model: name, messages, max_tokens: 12, temperature: 0 });
same('chat reply equals seer run --chat', chat.choices[0].message.content, chatRef.text);
same('chat reply role', chat.choices[0].message.role, 'assistant');
let chatStreamed = '';
const chatStream = await client.chat.completions.create({
  model: name, messages, max_completion_tokens: 12, temperature: 0, stream: true,
});
for await (const chunk of chatStream) chatStreamed += chunk.choices[0]?.delta?.content ?? '';
same('streamed chat reply equals seer run --chat', chatStreamed, chatRef.text);

// vLLM's chat controls: an assistant turn continued (no generation prompt,
// the final message left open) with template kwargs, as `seer run --chat`
// renders it with the same flags; without the generation prompt the reply
// changes.
{
  const opened = [...messages, { role: 'assistant', content: 'red,' }];
  writeFileSync(join(dir, 'open.json'), JSON.stringify(opened));
  const kwargs = { date_string: '1 Jan 2030' };
  const cont = await client.chat.completions.create({
    model: name, messages: opened, max_tokens: 12, temperature: 0,
    add_generation_prompt: false, continue_final_message: true, chat_template_kwargs: kwargs,
  });
  const contRef = seerRun(['--chat', join(dir, 'open.json'), '--add-generation-prompt=false',
    '--continue-final-message', '--chat-template-kwargs', JSON.stringify(kwargs)], 12);
  same('continue_final_message reply equals seer run --continue-final-message', cont.choices[0].message.content,
       contRef.text);
  check('... and differs from the reply to a fresh assistant turn', cont.choices[0].message.content !== chatRef.text,
        JSON.stringify(cont.choices[0].message.content));
  try {
    await client.chat.completions.create({ model: name, messages: opened, max_tokens: 2, continue_final_message: true });
    check('continue_final_message with the generation prompt is refused', false, 'it was answered');
  } catch (e) {
    same('continue_final_message with the generation prompt is a 400 naming it', [e.status, e.param],
         [400, 'continue_final_message']);
  }
}

// Errors come back in OpenAI's shape, as the client's typed errors.
async function expectError(what, call, Type, status, param) {
  try {
    await call();
    check(what, false, 'no error');
  } catch (e) {
    check(what, e instanceof Type && e.status === status && (param === undefined || e.param === param),
          `${e.constructor.name} ${e.status} param=${e.param}: ${e.message}`);
  }
}
await expectError('an unknown model is NotFoundError 404',
                  () => client.completions.create({ model: 'gpt-4', prompt, max_tokens: 4 }), OpenAI.NotFoundError, 404);
await expectError('n = 17 is BadRequestError 400 naming n',
                  () => client.completions.create({ model: name, prompt, max_tokens: 4, n: 17 }),
                  OpenAI.BadRequestError, 400, 'n');
await expectError('max_tokens past the server limit is BadRequestError 400 naming max_tokens',
                  () => client.completions.create({ model: name, prompt, max_tokens: 10000000 }),
                  OpenAI.BadRequestError, 400, 'max_tokens');
await expectError('a prompt past the context is BadRequestError 400 naming prompt',
                  () => client.completions.create({ model: name, prompt: Array(2100).fill(1), max_tokens: 4 }),
                  OpenAI.BadRequestError, 400, 'prompt');

// Logprobs, as the official client asks for them, against `seer run
// --logprobs` (the offline path, the same model and gates): each token's
// logprob and its alternatives' values, for completions and chat, whole and
// streamed. They are the model's own: banning the greedy token with a -100
// bias gives the second most likely token, reported at its unbiased logprob.
{
  const close = (a, b) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < 1e-4);
  const lpRef = seerRun(['--prompt', prompt, '--logprobs', '3'], 24);
  const lp = await client.completions.create({ model: name, prompt, max_tokens: 24, temperature: 0, logprobs: 3 });
  const got = lp.choices[0].logprobs;
  check('completion logprobs equal seer run --logprobs',
        close(got.token_logprobs, lpRef.logprobs.map((e) => e.logprob)),
        `got ${JSON.stringify(got.token_logprobs)}, want ${JSON.stringify(lpRef.logprobs.map((e) => e.logprob))}`);
  same('completion logprobs.tokens join to the text', got.tokens.join(''), lp.choices[0].text);
  const alternatives = got.top_logprobs.map((m) => Object.values(m).sort((a, b) => b - a));
  const refAlternatives = lpRef.logprobs.map((e) => e.top.map((t) => t.logprob));
  check('completion top_logprobs equal seer run\'s alternatives',
        alternatives.length === refAlternatives.length &&
          alternatives.every((a, i) => close(a.slice(0, 3), refAlternatives[i])),
        `got ${JSON.stringify(alternatives)}, want ${JSON.stringify(refAlternatives)}`);
  let streamedTokens = [];
  const lpStream = await client.completions.create({
    model: name, prompt, max_tokens: 24, temperature: 0, logprobs: 3, stream: true,
  });
  for await (const chunk of lpStream) streamedTokens.push(...(chunk.choices[0]?.logprobs?.token_logprobs ?? []));
  check('streamed completion logprobs equal seer run --logprobs',
        close(streamedTokens, lpRef.logprobs.map((e) => e.logprob)), JSON.stringify(streamedTokens));

  const banned = await client.completions.create({
    model: name, prompt, max_tokens: 1, temperature: 0, logprobs: 0, logit_bias: { [lpRef.tokens[0]]: -100 },
  });
  check('a banned greedy token leaves the second most likely, at its own logprob',
        close(banned.choices[0].logprobs.token_logprobs, [lpRef.logprobs[0].top[1].logprob]),
        `${JSON.stringify(banned.choices[0].logprobs)} vs ${JSON.stringify(lpRef.logprobs[0])}`);

  const chatLpRef = seerRun(['--chat', join(dir, 'chat.json'), '--logprobs', '2'], 12);
  const chatLp = await client.chat.completions.create({
    model: name, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const content = chatLp.choices[0].logprobs.content;
  check('chat logprobs.content equals seer run --logprobs',
        close(content.map((e) => e.logprob), chatLpRef.logprobs.map((e) => e.logprob)) &&
          content.every((e, i) => close(e.top_logprobs.map((t) => t.logprob), chatLpRef.logprobs[i].top.map((t) => t.logprob))),
        `got ${JSON.stringify(content)}, want ${JSON.stringify(chatLpRef.logprobs)}`);
  check('chat logprobs bytes read as UTF-8 are each token\'s text',
        content.every((e) => Buffer.from(e.bytes).toString('utf8') === e.token),
        JSON.stringify(content[0]));
  const streamedContent = [];
  const chatLpStream = await client.chat.completions.create({
    model: name, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2, stream: true,
  });
  for await (const chunk of chatLpStream) streamedContent.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  same('streamed chat logprobs equal the whole reply\'s', streamedContent, content);
  await expectError('top_logprobs without logprobs is BadRequestError 400 naming it',
                    () => client.chat.completions.create({ model: name, messages, max_tokens: 2, top_logprobs: 2 }),
                    OpenAI.BadRequestError, 400, 'top_logprobs');
}

// Echo with logprobs, as lm-evaluation-harness scores a continuation: a
// batch of one prompt of token ids (the prompt and 5 greedy tokens), echo,
// logprobs 1, max_tokens 1. The prompt's logprobs (dense, from the prefill's
// every-row logits) at the 5 tokens equal their logprobs as decoded one by
// one (`seer run --sparsity dense --logprobs`, the KV through decode steps),
// and each is its position's most likely token (lm-eval's is_greedy); the
// first token has none; the one new token has the 6th greedy one's.
{
  const close = (a, b) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < 1e-4);
  const greedy = seerRun(['--ids', ids.join(','), '--sparsity', 'dense', '--logprobs', '1'], 6);
  const scored = await client.completions.create({
    model: name, prompt: [ids.concat(greedy.tokens.slice(0, 5))], echo: true, logprobs: 1, max_tokens: 1,
    temperature: 0, seer_sparsity: 'dense',
  });
  const lp = scored.choices[0].logprobs;
  same('echo lists every prompt token and the new one', lp.token_logprobs.length, ids.length + 6);
  same('the first prompt token has no logprob', [lp.token_logprobs[0], lp.top_logprobs[0]], [null, null]);
  check('echoed prompt logprobs equal the decoded tokens\' logprobs',
        close(lp.token_logprobs.slice(ids.length), greedy.logprobs.map((e) => e.logprob)),
        `got ${JSON.stringify(lp.token_logprobs.slice(ids.length))}, want ${JSON.stringify(greedy.logprobs)}`);
  const isGreedy = lp.tokens.slice(ids.length).every((t, i) => {
    const top = lp.top_logprobs[ids.length + i];
    return Object.keys(top).reduce((a, b) => (top[a] >= top[b] ? a : b)) === t;
  });
  check('each continuation token is its position\'s most likely (is_greedy)', isGreedy, JSON.stringify(lp.top_logprobs));
  check('the echoed text starts with the prompt\'s tokens\' texts',
        scored.choices[0].text === lp.tokens.join(''), JSON.stringify([scored.choices[0].text, lp.tokens]));
  // max_tokens 0 with echo scores the prompt alone: the same prompt
  // logprobs, no new token, 0 completion tokens.
  const only = await client.completions.create({
    model: name, prompt: [ids.concat(greedy.tokens.slice(0, 5))], echo: true, logprobs: 1, max_tokens: 0,
    temperature: 0, seer_sparsity: 'dense',
  });
  const olp = only.choices[0].logprobs;
  same('max_tokens 0 with echo lists the prompt\'s tokens alone', olp.tokens, lp.tokens.slice(0, ids.length + 5));
  same('... with the same logprobs', olp.token_logprobs, lp.token_logprobs.slice(0, ids.length + 5));
  same('... and no completion tokens', [only.usage.completion_tokens, only.choices[0].finish_reason], [0, 'length']);
  // A prompt token's text is what it adds to the prompt's text (decoded
  // incrementally), so the texts joined are the prompt decoded whole, and
  // so is the echo of a prompt of ids. This tokenizer's decoder strips the
  // text's first space (SentencePiece's way): decoded one by one, every
  // word's token would lose its space. text_offset walks the echo.
  const wide = 'naïve café, 日本語 😀! and then some words';
  const wideIds = JSON.parse(execFileSync(join(bin, 'seer'), ['tokenize', '--tokenizer', model, '--text', wide,
    '--json']).toString()).ids;
  const wideText = JSON.parse(execFileSync(join(bin, 'seer'), ['detokenize', '--tokenizer', model, '--ids',
    wideIds.join(','), '--skip-special-tokens', '--json']).toString()).text;
  const scoredWide = await client.completions.create({
    model: name, prompt: wide, echo: true, logprobs: 0, max_tokens: 0, temperature: 0,
  });
  const wlp = scoredWide.choices[0].logprobs;
  same('prompt token texts joined are the prompt decoded whole', wlp.tokens.join(''), wideText);
  same('text_offset walks the echoed prompt', wlp.text_offset,
       wlp.tokens.map((_, i) => [...wlp.tokens.slice(0, i).join('')].length));
  const echoedIds = await client.completions.create({
    model: name, prompt: [wideIds], echo: true, max_tokens: 0, temperature: 0,
  });
  same('a prompt of ids echoes as it decodes whole', echoedIds.choices[0].text, wideText);
}

// The prefix stores: a seer-prefill with --prefix-cache-bytes behind a second
// worker with --kv-prefix-cache-bytes. A chat's next turn repeats the first
// turn's messages: its usage says how many prompt tokens came from the
// prefill's store (OpenAI's prompt_tokens_details.cached_tokens), the worker
// held their KV (its metrics), and its reply is the store-less servers',
// token for token.
const storedPrefill = await start('seer-prefill', ['--listen', '127.0.0.1:0', '--gates', gates,
                                                   '--prefix-cache-bytes', '1073741824', ...common], (out) => {
  const m = out.match(/listening on (\S+)/);
  return m && out.includes(' ready: ') ? m[1] : null;
});
const [storedHttp, storedMetrics] = await start(
  'seer-decode', ['--listen', '127.0.0.1:0', '--prefill', storedPrefill, '--http', '127.0.0.1:0',
                  '--kv-prefix-cache-bytes', '134217728', '--metrics', '127.0.0.1:0', '--model', model,
                  '--device', 'cpu'],
  (out) => {
    const m = out.match(/http on (\S+)/);
    const metrics = out.match(/metrics on (\S+)/);
    return m && metrics && out.includes(' ready: ') ? [m[1], metrics[1]] : null;
  });
{
  const storedClient = new OpenAI({ baseURL: `http://${storedHttp}/v1`, apiKey: 'not-needed', maxRetries: 0,
                                    timeout: 60000 });
  const document = Array.from({ length: 60 }, (_, i) => `line ${i}: one two three four five`).join('\n');
  const turn1 = [{ role: 'system', content: document }, { role: 'user', content: 'What is on line 7?' }];
  const ask = (c, messages) => c.chat.completions.create({ model: name, messages, max_tokens: 8, temperature: 0 });
  const first = await ask(storedClient, turn1);
  same('a first prompt takes nothing from the store', first.usage.prompt_tokens_details?.cached_tokens, 0);
  const turn2 = [...turn1, { role: 'assistant', content: first.choices[0].message.content },
                 { role: 'user', content: 'And on line 9?' }];
  let second = null;
  // The store takes the first prompt's cache once its KV stream is done.
  for (let i = 0; i < 50; i++) {
    second = await ask(storedClient, turn2);
    if (second.usage.prompt_tokens_details?.cached_tokens > 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const cached = second.usage.prompt_tokens_details?.cached_tokens ?? 0;
  check('the next turn takes most of its prompt from the store, in whole 64-token blocks',
        cached >= first.usage.prompt_tokens - 192 && cached % 64 === 0 && cached < second.usage.prompt_tokens,
        JSON.stringify([first.usage, second.usage]));
  const page = await (await fetch(`http://${storedMetrics}/metrics`)).text();
  const held = Number(page.match(/^seer_decode_kv_prefix_held_tokens_total (\S+)$/m)?.[1] ?? 0);
  check('... and the decode worker held most of its KV (only the rest moved)',
        held >= first.usage.prompt_tokens - 192 && held % 64 === 0, `held ${held}`);
  const plain = await ask(client, turn2);
  same('... and replies as the servers without a store', second.choices[0].message.content,
       plain.choices[0].message.content);
  same('... which took nothing from a store', plain.usage.prompt_tokens_details?.cached_tokens, 0);
}

// HTTPS: seer-decode serves the API with a certificate from a CA made here
// (the gRPC port's --tls-cert). The client trusts the CA as an operator's
// node client would, through NODE_EXTRA_CA_CERTS, which node reads when it
// starts: so in a child node process.
execFileSync('bash', [join(root, 'tests/ops/make_test_pki.sh'), dir, 'web']);
const https = await start(
  'seer-decode',
  ['--listen', '127.0.0.1:0', '--prefill', prefill, '--http', '127.0.0.1:0', '--tls-cert', join(dir, 'web-server.crt'),
   '--tls-key', join(dir, 'web-server.key'), ...common],
  (out) => {
    const m = out.match(/http on (\S+) \(OpenAI API over TLS/);
    return m && out.includes(' ready: ') ? m[1] : null;
  });
function tlsChild(baseURL, env) {
  const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--tls-child', baseURL, name, prompt],
                           { env: { ...process.env, ...env } });
  return JSON.parse(out.toString());
}
const trusted = tlsChild(`https://${https}/v1`, { NODE_EXTRA_CA_CERTS: join(dir, 'web-ca.crt') });
same('over HTTPS, models.list names the served model', trusted.models, [name]);
same('over HTTPS, the streamed completion equals seer run', trusted.text, ref.text);
const untrusted = tlsChild(`https://${https}/v1`, {});
same('a client that does not trust the CA gets APIConnectionError', untrusted.error, 'APIConnectionError');
const plaintext = tlsChild(`http://${https}/v1`, {});
check('a plaintext client of the HTTPS port gets BadRequestError saying so',
      plaintext.error === 'BadRequestError' && plaintext.message.includes('serves HTTPS'), JSON.stringify(plaintext));

if (failures.length > 0) {
  console.error(`check_openai: ${failures.length} check(s) failed: ${failures.join('; ')}`);
  process.exit(1);
}
console.log('check_openai: every check passed');
process.exit(0);
