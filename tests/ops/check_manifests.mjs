// CI: renders deploy/base and every overlay the way kustomize does
// (`kubectl kustomize`), and validates each rendered object against the
// Kubernetes (and Prometheus Operator) schemas with the kubernetes-models
// packages; then checks what a `restricted` namespace and
// kube-prometheus-stack need of them, and lints deploy/Dockerfile.
//   node tests/ops/check_manifests.mjs
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { DockerfileParser } from 'dockerfile-ast';

const root = fileURLToPath(new URL('../..', import.meta.url));
const failures = [];
const fail = (where, what) => failures.push(`${where}: ${what}`);

async function model(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const pkg = group === 'monitoring.coreos.com' ? '@kubernetes-models/prometheus-operator' : 'kubernetes-models';
  const dir = group === '' || group === 'monitoring.coreos.com' ? (group || '') : group.replace('.k8s.io', '.k8s.io');
  const path = group === '' ? `${pkg}/${version}/${kind}` : `${pkg}/${dir}/${version}/${kind}`;
  try {
    return (await import(path))[kind];
  } catch (e) {
    return null;
  }
}

// Pod Security "restricted" (the fields it checks) on every pod template.
// What the servers would refuse, or what could never pass, once rendered:
// --metrics-tls needs --tls-cert (the servers exit at start otherwise); a
// probe on the metrics port must speak what it serves (HTTPS with
// --metrics-tls, else HTTP); kubelet's gRPC probes cannot speak TLS; the
// liveness probe asks the process itself (GET /livez on the metrics port: a
// TCP connect succeeds for a stopped process, completed from the backlog).
function checkServerFlags(where, pod) {
  for (const c of pod.containers ?? []) {
    const args = [...(c.command ?? []), ...(c.args ?? [])];
    const has = (flag) => args.some((a) => a === flag || a.startsWith(`${flag}=`));
    const tls = has('--tls-cert');
    const metricsTls = has('--metrics-tls');
    if (metricsTls && !tls) fail(where, `${c.name}: --metrics-tls needs --tls-cert (the server refuses it otherwise)`);
    const live = c.livenessProbe?.httpGet;
    if (!live || live.path !== '/livez' || live.port !== 'metrics')
      fail(where, `${c.name}: livenessProbe is not GET /livez on the metrics port`);
    for (const p of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      if (tls && c[p]?.grpc) fail(where, `${c.name}: ${p} is a gRPC probe on a TLS port (kubelet's gRPC probe has no TLS)`);
      const get = c[p]?.httpGet;
      if (get?.port === 'metrics' && (get.scheme === 'HTTPS') !== metricsTls)
        fail(where, `${c.name}: ${p} uses ${get.scheme ?? 'HTTP'} on a metrics port that serves ${metricsTls ? 'HTTPS' : 'HTTP'}`);
    }
  }
}

function checkRestricted(where, pod) {
  const psc = pod.securityContext ?? {};
  if (psc.seccompProfile?.type !== 'RuntimeDefault') fail(where, 'pod seccompProfile is not RuntimeDefault');
  if (psc.runAsNonRoot !== true) fail(where, 'pod runAsNonRoot is not true');
  for (const c of [...(pod.containers ?? []), ...(pod.initContainers ?? [])]) {
    const sc = c.securityContext ?? {};
    if (sc.allowPrivilegeEscalation !== false) fail(where, `${c.name}: allowPrivilegeEscalation is not false`);
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) fail(where, `${c.name}: capabilities do not drop ALL`);
    if (sc.privileged) fail(where, `${c.name}: privileged`);
    if (!/^[a-z0-9.-]+\.[a-z]+(:\d+)?\/.+[:@]/.test(c.image)) fail(where, `${c.name}: image '${c.image}' is not qualified and tagged`);
  }
  for (const v of pod.volumes ?? []) if (v.hostPath) fail(where, `volume ${v.name} is a hostPath`);
}

let objects = 0;
for (const target of ['deploy/base', 'deploy/overlays/dev', 'deploy/overlays/production']) {
  const text = execFileSync('kubectl', ['kustomize', join(root, target)], { encoding: 'utf8' });
  const kinds = new Set();
  for (const doc of parseAllDocuments(text)) {
    const obj = doc.toJS();
    if (!obj) continue;
    ++objects;
    const where = `${target}: ${obj.kind}/${obj.metadata?.name}`;
    kinds.add(obj.kind);
    const Model = await model(obj.apiVersion, obj.kind);
    if (!Model) {
      fail(where, `no schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (e) {
      fail(where, `schema: ${e.message}`);
    }
    if (obj.kind !== 'Namespace' && obj.metadata?.namespace !== 'seer') fail(where, 'not in namespace seer');
    if (obj.kind === 'Deployment') {
      checkRestricted(where, obj.spec.template.spec);
      checkServerFlags(where, obj.spec.template.spec);
    }
    if (obj.kind === 'ServiceMonitor' || obj.kind === 'PrometheusRule')
      if (!obj.metadata.labels?.release) fail(where, 'no release label (kube-prometheus-stack selects on it)');
    if (obj.kind === 'Namespace' && obj.metadata.labels?.['pod-security.kubernetes.io/enforce'] !== 'restricted')
      fail(where, 'the namespace does not enforce the restricted Pod Security level');
  }
  const need = ['Namespace', 'ServiceAccount', 'Deployment', 'Service', 'PodDisruptionBudget', 'NetworkPolicy',
                'ServiceMonitor', 'PrometheusRule', 'ConfigMap', ...(target.endsWith('dev') ? [] : ['HorizontalPodAutoscaler'])];
  for (const k of need) if (!kinds.has(k)) fail(target, `renders no ${k}`);
  console.log(`${target}: ${[...kinds].sort().join(', ')}`);
}

// deploy/Dockerfile: parsed, then the rules a reviewer would hold it to.
const dockerfile = readFileSync(join(root, 'deploy/Dockerfile'), 'utf8');
const parsed = DockerfileParser.parse(dockerfile);
const ins = parsed.getInstructions();
const froms = parsed.getFROMs();
const stages = froms.map((f) => f.getBuildStage()).filter(Boolean);
if (froms.length < 2) fail('Dockerfile', 'not multi-stage');
for (const f of froms) {
  const image = f.getImageName(), tag = f.getImageTag(), digest = f.getImageDigest();
  if (!tag && !digest) fail('Dockerfile', `FROM ${image} has no tag`);
  if (tag === 'latest') fail('Dockerfile', `FROM ${image}:latest`);
}
for (const i of ins) {
  const k = i.getKeyword(), args = i.getRawArgs?.() ?? i.getTextContent();
  if (k === 'COPY' || k === 'ADD') {
    const from = i.getFromFlag?.();
    if (from && !stages.includes(from.getValue())) fail('Dockerfile', `COPY --from=${from.getValue()}: no such stage`);
  }
  if (k === 'ADD' && !/--chown|https?:/.test(args)) fail('Dockerfile', 'ADD where COPY would do');
  if (k === 'RUN' && /apt-get install/.test(args)) {
    if (!/--no-install-recommends/.test(args) && !/install-deps\.sh/.test(args))
      fail('Dockerfile', 'apt-get install without --no-install-recommends');
    if (!/rm -rf \/var\/lib\/apt\/lists/.test(args)) fail('Dockerfile', 'apt lists left in a layer');
  }
  if (k === 'RUN' && /\bsudo\b/.test(args)) fail('Dockerfile', 'sudo in RUN');
  if (k === 'RUN' && /(curl|wget)[^|]*\|\s*(ba)?sh/.test(args)) fail('Dockerfile', 'a downloaded script piped to a shell');
}
const lastStage = ins.slice(ins.indexOf(froms[froms.length - 1]));
const users = lastStage.filter((i) => i.getKeyword() === 'USER');
if (users.length === 0 || /^(0|root)(:|$)/.test(users[users.length - 1].getRawArgs?.() ?? ''))
  fail('Dockerfile', 'the final stage does not switch to a non-root USER');
if (!ins.some((i) => i.getKeyword() === 'ARG' && /SEER_VERSION|SEER_GIT_COMMIT/.test(i.getTextContent())))
  fail('Dockerfile', 'no build argument bakes in the version');
for (const d of parsed.getDirectives?.() ?? []) if (d.getDirective() === 'syntax') break;

console.log(`${objects} rendered objects validated; Dockerfile: ${froms.length} stages, ${ins.length} instructions`);
if (failures.length) {
  for (const f of failures) console.error(`FAIL ${f}`);
  process.exit(1);
}
