// CI: every expression of deploy/observability (the Grafana dashboard, the
// recording rules, the alerts) evaluated by a real Prometheus (Debian's
// prometheus) scraping the real seer-prefill and seer-decode after a few
// requests; and the rules through promtool check rules / test rules.
//   node tests/ops/check_observability.mjs BUILD_BIN_DIR
// Exits non-zero naming each expression that returned no data.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rulesFile } from './rules_file.mjs';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = process.argv[2] ?? join(root, 'build/bin');
const fixtures = join(root, 'tests/fixtures');
const dir = mkdtempSync(join(tmpdir(), 'seer-prom-'));
const children = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function start(cmd, args, ready) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start:\n${out}`)), 60000);
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
    child.on('exit', (code) => reject(new Error(`${cmd} exited ${code}:\n${out}`)));
  });
}

const startServer = (name, extra) =>
  start(join(bin, name), ['--listen', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--model', join(fixtures, 'llama'),
                          '--device', 'cpu', ...extra], (out) => {
    const m = out.match(/listening on (\S+) metrics on (\S+)/);
    return m && out.includes(' ready: ') ? { grpc: m[1], metrics: m[2], http: out.match(/ http on (\S+)/)?.[1] } : null;
  });

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// promtool first: the rule file is valid and its unit tests pass.
writeFileSync(join(dir, 'seer-rules.yaml'), rulesFile());
execFileSync('promtool', ['check', 'rules', join(dir, 'seer-rules.yaml')], { stdio: 'inherit' });
writeFileSync(join(dir, 'rules_test.yaml'), readFileSync(join(root, 'tests/ops/rules_test.yaml')));
execFileSync('promtool', ['test', 'rules', 'rules_test.yaml'], { stdio: 'inherit', cwd: dir });

const t0 = Date.now();
// seer-prefill serves gRPC and /metrics over TLS (a CA made here), so the
// scrape below is Prometheus' own HTTPS client verifying the certificate.
execFileSync('bash', [join(root, 'tests/ops/make_test_pki.sh'), dir, 'obs']);
const prefill = await startServer('seer-prefill', ['--gates', join(fixtures, 'llama_gates'),
  '--tls-cert', join(dir, 'obs-server.crt'), '--tls-key', join(dir, 'obs-server.key'), '--metrics-tls']);
const decode = await startServer('seer-decode', ['--prefill', prefill.grpc,
  '--prefill-tls-ca', join(dir, 'obs-ca.crt'), '--http', '127.0.0.1:0']);
// Recording rules every second here (30 s in the cluster).
writeFileSync(join(dir, 'seer-rules-ci.yaml'), rulesFile('1s'));
writeFileSync(join(dir, 'prometheus.yml'), `global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [${JSON.stringify(join(dir, 'seer-rules-ci.yaml'))}]
scrape_configs:
  - job_name: seer-prefill
    scheme: https
    tls_config: {ca_file: ${JSON.stringify(join(dir, 'obs-ca.crt'))}}
    static_configs: [{targets: ["${prefill.metrics}"]}]
  - job_name: seer-decode
    static_configs: [{targets: ["${decode.metrics}"]}]
`);
const port = await freePort();
const api = `http://127.0.0.1:${port}/api/v1`;
await start('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
                           `--web.listen-address=127.0.0.1:${port}`],
            (out) => out.includes('Server is ready to receive web requests'));

async function query(expr) {
  const r = await fetch(`${api}/query?query=${encodeURIComponent(expr)}`);
  const j = await r.json();
  if (j.status !== 'success') throw new Error(`${expr}: ${j.error}`);
  return j.data.result;
}
async function waitFor(what, ok, seconds = 30) {
  for (let i = 0; i < seconds * 4; ++i) {
    if (await ok()) return;
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what}`);
}
// Both targets scraped once before any request, so rates see the increase
// (seer-prefill over HTTPS).
await waitFor('both targets up', async () => (await query('up == 1')).length === 2);

const seer = (args) => {
  try {
    execFileSync(join(bin, 'seer'), ['generate', '--addr', decode.grpc, ...args], { stdio: 'pipe' });
    return 0;
  } catch (e) {
    return e.status;
  }
};
for (let i = 0; i < 6; ++i) {
  const ids = Array.from({ length: 40 + 30 * i }, (_, k) => (k * 7 + i) % 128).join(',');
  if (seer(['--ids', ids, '--max-new-tokens', '5']) !== 0) throw new Error('a generate request failed');
}
// fp8 asked of a prefill without --allow-kv-fp8: served in bf16, counted as a fallback.
if (seer(['--ids', '5,6,7,8,9', '--max-new-tokens', '2', '--kv-wire', 'fp8']) !== 0) throw new Error('the fp8 request failed');
if (seer(['--ids', '1,2,999', '--max-new-tokens', '2']) !== 1) throw new Error('the bad request did not fail');
// One answer of the OpenAI HTTP API (seer_http_requests_total).
const completion = await fetch(`http://${decode.http}/v1/completions`, {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: [5, 6, 7], max_tokens: 2 }) });
if (completion.status !== 200) throw new Error(`the HTTP completion failed: ${completion.status} ${await completion.text()}`);
await waitFor('the requests scraped',
              async () => (await query('sum(seer_decode_requests_total) >= 8 and sum(seer_prefill_requests_total) >= 7')).length > 0);

// Every expression, with Grafana's variables as the dashboard sets them.
const exprs = [];
const dashboard = JSON.parse(readFileSync(join(root, 'deploy/observability/seer-dashboard.json'), 'utf8'));
// The GPU gauges exist only on servers with --device cuda: here their
// expressions must evaluate, and tests/ops/check_gpu_panels.py checks their
// data on the GPU machine.
for (const p of dashboard.panels)
  for (const t of p.targets ?? []) {
    const gpuOnly = t.expr.includes('seer_gpu_');
    exprs.push({ from: `dashboard "${p.title}"${gpuOnly ? ' (GPU only)' : ''}`, mayBeEmpty: gpuOnly,
                 expr: t.expr.replaceAll('$__rate_interval', '1m')
                   .replaceAll('$prefill_job', 'seer-prefill').replaceAll('$decode_job', 'seer-decode') });
  }
const rules = (await import('yaml')).parse(rulesFile());
for (const g of rules.groups)
  for (const r of g.rules) {
    if (r.record) exprs.push({ from: `record ${r.record}`, expr: r.expr });
    if (r.alert) {
      // The alert's condition evaluates; what it compares has data.
      exprs.push({ from: `alert ${r.alert}`, expr: r.expr, mayBeEmpty: true });
      r.expr.split(/\s+and\s+/).forEach((side, i) =>
        exprs.push({ from: `alert ${r.alert} (left side ${i + 1})`,
                     expr: side.replace(/\s*(==|!=|>=|<=|>|<)\s*[-0-9.e+]+\s*$/, '') }));
    }
  }

// The Prometheus Adapter's rules, as the adapter would run them for one pod
// (here the labels the scrape has: no namespace or pod, so the matchers are
// the job's), and every Pods metric the HPAs scale on is one they serve.
const yamlLib = await import('yaml');
const adapter = yamlLib.parse(readFileSync(join(root, 'deploy/observability/prometheus-adapter-rules.yaml'), 'utf8'));
const served = new Set();
for (const rule of adapter.rules.custom) {
  const selector = rule.seriesQuery.replace(/,?\s*(namespace|pod)!=""/g, '');
  const names = [...new Set((await query(`count by (__name__) (${selector})`)).map((r) => r.metric.__name__))];
  if (names.length === 0) exprs.push({ from: `adapter seriesQuery ${rule.seriesQuery}`, expr: selector });
  for (const name of names) {
    const as = rule.name.as.replace('${1}', name.match(new RegExp(rule.name.matches ?? '^(.*)$'))?.[1] ?? name);
    served.add(as);
    exprs.push({ from: `adapter metric ${as}`,
                 expr: rule.metricsQuery.replaceAll('<<.Series>>', name)
                   .replaceAll('<<.LabelMatchers>>', 'job!=""').replaceAll('<<.GroupBy>>', 'job') });
  }
}
for (const hpa of yamlLib.parseAllDocuments(readFileSync(join(root, 'deploy/base/hpa.yaml'), 'utf8')).map((d) => d.toJS()))
  for (const m of hpa.spec.metrics)
    if (m.type === 'Pods' && !served.has(m.pods.metric.name)) {
      console.error(`HPA ${hpa.metadata.name} scales on ${m.pods.metric.name}, which no adapter rule serves`);
      process.exit(1);
    }

const empty = [];
for (const e of exprs) {
  let n = 0;
  const deadline = Date.now() + 20000;
  for (;;) {
    n = (await query(e.expr)).length;
    if (n > 0 || e.mayBeEmpty || Date.now() > deadline) break;
    await sleep(500);
  }
  console.log(`${String(n).padStart(3)} series  ${e.from}`);
  if (n === 0 && !e.mayBeEmpty) empty.push(e);
}
console.log(`${exprs.length} expressions evaluated by Prometheus in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
if (empty.length) {
  for (const e of empty) console.error(`no data: ${e.from}: ${e.expr}`);
  process.exit(1);
}
process.exit(0);
