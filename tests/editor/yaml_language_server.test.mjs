// The shipped schema as an editor sees it: the real yaml-language-server, driven over stdio.
//
// - every pipeline in pipelines/ and examples/ opens with zero diagnostics;
// - every broken pipeline in broken/ gets exactly the diagnostics its `# expect: …` comments
//   name, on their lines;
// - completion at `op:` offers the ops, and inside each op's `with:` its parameters, all with
//   documentation, and no completion inserts `[object Object]`.
//
// Run: `npm ci && npm test` in tests/editor (.ci/run does).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Client } from './lsp.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const schema = JSON.parse(readFileSync(join(root, 'schemas', 'pipeline.schema.json'), 'utf8'));

const yamlFiles = (dir) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
    .sort()
    .map((f) => join(dir, f));

const show = (diags) =>
  diags.map((d) => `${d.range.start.line + 1}:${d.range.start.character + 1} ${d.message}`).join('\n');

/** The ops the schema knows, with their `with:` parameter names. */
function opsInSchema() {
  const step = schema.$defs.StepDoc;
  const resolve = (s) => (s?.$ref ? schema.$defs[s.$ref.split('/').pop()] : s);
  return step.allOf.map((branch) => {
    const name = branch.if.properties.op.const;
    const params = resolve(branch.then.properties.with);
    return { name, params: Object.keys(params.properties ?? {}).sort() };
  });
}

let client;
before(async () => {
  client = new Client(root);
  await client.start();
});
after(async () => {
  await client?.stop();
});

describe('shipped pipelines open without a diagnostic', () => {
  const files = [...yamlFiles(join(root, 'pipelines')), ...yamlFiles(join(root, 'examples'))];
  test('there are pipelines to check', () => assert.ok(files.length >= 5, files.join(', ')));
  for (const file of files) {
    test(file.slice(root.length + 1), async () => {
      const text = readFileSync(file, 'utf8');
      assert.match(text, /^# yaml-language-server: \$schema=\S+\n/, 'names its schema on line 1');
      const diags = await client.diagnosticsFor(client.open(file, text));
      assert.equal(diags.length, 0, show(diags));
    });
  }
});

describe('broken pipelines get the diagnostics they expect, on their lines', () => {
  for (const file of yamlFiles(join(here, 'broken'))) {
    test(file.slice(here.length + 1), async () => {
      const text = readFileSync(file, 'utf8');
      const expected = text
        .split('\n')
        .map((line, i) => ({ line: i + 1, want: /# expect: (.+)$/.exec(line)?.[1].trim() }))
        .filter((e) => e.want);
      assert.ok(expected.length > 0, 'the fixture names what it expects');
      const diags = await client.diagnosticsFor(client.open(file, text));
      const got = diags.map((d) => ({ line: d.range.start.line + 1, message: d.message }));
      for (const e of expected) {
        assert.ok(
          got.some((g) => g.line === e.line && g.message.includes(e.want)),
          `line ${e.line}: expected "${e.want}"; got:\n${show(diags)}`,
        );
      }
      const unexpected = got.filter((g) => !expected.some((e) => e.line === g.line));
      assert.deepEqual(unexpected, [], 'no diagnostic on a line without `# expect:`');
    });
  }
});

describe('completion', () => {
  const ops = opsInSchema();
  const header = '# yaml-language-server: $schema=../schemas/pipeline.schema.json\n';
  const doc = (body) => `${header}version: 1\nname: completion\nphases:\n  p:\n    steps:\n      s:\n${body}`;
  const docText = (item) => {
    const d = item.documentation;
    return typeof d === 'string' ? d : (d?.value ?? '');
  };
  let n = 0;
  // Documents open beside the pipelines so that the relative `$schema` resolves.
  const open = (text) => client.open(join(root, 'pipelines', `.completion-${n++}.yaml`), text);

  test('the schema names the six ops of the reference pipeline', () => {
    const names = ops.map((o) => o.name);
    for (const op of ['download', 'train', 'merge', 'bake', 'quantize', 'validate']) {
      assert.ok(names.includes(op), `${op} in ${names}`);
    }
  });

  test('at `op:` every op is offered, with its description', async () => {
    const uri = open(doc('        op: \n'));
    await client.diagnosticsFor(uri);
    const items = await client.complete(uri, 7, 12);
    const labels = items.map((i) => i.label).sort();
    assert.deepEqual(labels, ops.map((o) => o.name).sort());
    for (const i of items) assert.ok(docText(i).length > 10, `${i.label} has documentation`);
  });

  for (const op of ops) {
    test(`inside \`with:\` of ${op.name}: its parameters, documented`, async () => {
      const uri = open(doc(`        op: ${op.name}\n        with:\n          \n`));
      await client.diagnosticsFor(uri);
      const all = await client.complete(uri, 9, 10);
      // The server's first item inserts every required key at once; it is named by the title.
      const skeleton = all.filter((i) => i.sortText?.startsWith('_'));
      for (const i of skeleton) assert.equal(i.label, `${op.name} parameters`);
      const items = all.filter((i) => !skeleton.includes(i));
      const labels = items.map((i) => i.label).sort();
      assert.deepEqual(labels, op.params, `completions for ${op.name}`);
      for (const i of all) {
        assert.ok(docText(i).length > 5, `${op.name}.${i.label} has documentation`);
        assert.ok(!(i.insertText ?? '').includes('[object Object]'), `${op.name}.${i.label}: ${i.insertText}`);
      }
    });
  }

  test('a parameter with a default inserts it', async () => {
    const uri = open(doc('        op: train\n        with:\n          \n'));
    await client.diagnosticsFor(uri);
    const items = await client.complete(uri, 9, 10);
    const steps = items.find((i) => i.label === 'steps');
    assert.match(steps.insertText, /^steps: \$\{1:200\}/);
    const curriculum = items.find((i) => i.label === 'curriculum');
    assert.match(curriculum.insertText, /until: 0\.3/);
  });
});
