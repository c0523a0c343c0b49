// Prints deploy/observability/prometheus-rule.yaml's spec as a plain
// Prometheus rule file (for promtool, or a Prometheus without the Operator):
//   node tests/ops/rules_file.mjs [--interval 1s] > seer-rules.yaml
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';

export function rulesFile(interval) {
  const path = fileURLToPath(new URL('../../deploy/observability/prometheus-rule.yaml', import.meta.url));
  const spec = parse(readFileSync(path, 'utf8')).spec;
  if (interval) for (const g of spec.groups) g.interval = interval;
  return stringify(spec);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--interval');
  process.stdout.write(rulesFile(i > 0 ? process.argv[i + 1] : undefined));
}
