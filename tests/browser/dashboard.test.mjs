// forge serve's dashboard in a real browser (Debian's chromium through playwright-core): while
// a pipeline runs, started from the page, the DAG shows every step, a progress value and a chart
// point appear without reloading (WebSocket), pause stops the run with its checkpoints and
// resume finishes it, a phone-width screen needs no sideways scrolling, and the console has no
// errors. Screenshots go to target/browser/ (FORGE_TEST_ARTIFACTS).
//
// Needs the forge binary (FORGE_BIN, default target/debug/forge: `cargo build` first) and
// chromium (CHROMIUM, default /usr/bin/chromium: `apt-get install chromium`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const root = path.resolve(import.meta.dirname, "../..");
const forge = process.env.FORGE_BIN ?? path.join(root, "target/debug/forge");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const artifacts = process.env.FORGE_TEST_ARTIFACTS ?? path.join(root, "target/browser");

const PIPELINE = `
version: 1
name: watch
phases:
  data:
    steps:
      corpus: { op: download, with: { source: "builtin:math", samples: 600 } }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 320 } }
  models:
    steps:
      model:
        op: train
        inputs: { data: data.corpus, tokenizer: data.tok }
        matrix: { v: [{ name: a, seed: 1 }, { name: b, seed: 2 }] }
        seed: "\${matrix.v.seed}"
        with:
          model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }
          steps: 80
          batch_size: 4
          seq_len: 32
          log_every: 2
          checkpoint_every: 4
          math_eval: 2
          eval_records: 8
`;
const STEPS = ["data.corpus", "data.tok", "models.model[v=a]", "models.model[v=b]"];

/** Start `forge serve` in `dir`; resolves with the process and the address it printed. */
function serve(dir) {
  const proc = spawn(forge, ["serve", "watch.yaml", "--port", "0"], {
    cwd: dir,
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    proc.on("error", reject);
    proc.on("exit", (code) => reject(new Error(`forge serve exited with ${code}`)));
    readline.createInterface({ input: proc.stdout }).on("line", (line) => {
      const url = line.split(/\s+/).find((w) => w.startsWith("http://"));
      if (url) resolve({ proc, url });
    });
  });
}

function checkpoints(dir) {
  const work = path.join(dir, ".forge", "work");
  if (!fs.existsSync(work)) return [];
  return fs.readdirSync(work).filter((k) => fs.existsSync(path.join(work, k, "checkpoint", "progress.json")));
}

test("the dashboard follows a run live, pauses it with checkpoints and resumes it", async (t) => {
  assert.ok(fs.existsSync(forge), `no forge binary at ${forge} (cargo build first)`);
  assert.ok(fs.existsSync(executablePath), `no chromium at ${executablePath} (apt-get install chromium)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forge-browser-"));
  fs.writeFileSync(path.join(dir, "watch.yaml"), PIPELINE);
  fs.mkdirSync(artifacts, { recursive: true });
  const { proc, url } = await serve(dir);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  t.after(async () => {
    await browser.close();
    proc.kill("SIGINT");
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  let loads = 0;
  page.on("load", () => loads++);

  // The address with the token sets the cookie and lands on the page.
  await page.goto(url);
  assert.equal(new URL(page.url()).search, "", "the token is not left in the address bar");
  await page.waitForSelector(`[data-step="${STEPS[3]}"]`);
  const shown = await page.$$eval("[data-step]", (els) => els.map((e) => e.dataset.step));
  assert.deepEqual(shown.sort(), [...STEPS].sort());
  const loadsBefore = loads;

  await page.click("#start");
  // A progress value and a chart point arrive over the WebSocket, without a reload.
  await page.waitForFunction(
    () => [...document.querySelectorAll(".progress-text")].some((e) => /\d+ \/ \d+/.test(e.textContent)),
    null,
    { timeout: 120_000 },
  );
  await page.waitForFunction(
    () => Number(document.querySelector('.chart[data-chart="0"]')?.dataset.points ?? 0) > 0,
    null,
    { timeout: 120_000 },
  );
  assert.equal(loads, loadsBefore, "the page was not reloaded");
  await page.screenshot({ path: path.join(artifacts, "dashboard-running.png"), fullPage: true });

  // Pause: the run stops cleanly and its training steps keep their checkpoints.
  await page.waitForFunction(() => !document.querySelector("#pause").disabled);
  await page.click("#pause");
  await page.waitForFunction(() => document.querySelector("#run").dataset.status === "cancelled", null, { timeout: 60_000 });
  assert.ok(checkpoints(dir).length > 0, "paused training left a checkpoint");

  // Resume: a new apply continues from the checkpoints and finishes.
  await page.waitForFunction(() => !document.querySelector("#resume").disabled);
  await page.click("#resume");
  await page.waitForFunction(() => document.querySelector("#run").dataset.status === "succeeded", null, { timeout: 300_000 });
  await page.waitForFunction(
    (ids) => ids.every((id) => ["ran", "cached"].includes(document.querySelector(`[data-step="${id}"]`)?.dataset.state)),
    STEPS,
    { timeout: 30_000 },
  );
  await page.screenshot({ path: path.join(artifacts, "dashboard.png"), fullPage: true });

  // A phone-width screen: everything fits its width.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: path.join(artifacts, "dashboard-phone.png"), fullPage: true });

  assert.deepEqual(errors, [], "the browser console has no errors");
});
