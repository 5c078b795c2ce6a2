// forge serve's dashboard: the pipeline's steps by phase with their state and progress, alerts,
// and charts of the numbers steps log, kept current by the WebSocket (/api/events) without
// reloading. Everything it shows comes from the REST routes and the event stream.
"use strict";

const $ = (id) => document.getElementById(id);
const CHARTS = [
  { title: "Training loss", metrics: ["train/loss"], ops: ["train", "bake"] },
  { title: "Long-term memory used (fraction of slots written)", metrics: ["ltm/memory_usage"], ops: ["train"] },
  { title: "Evolution fitness (best / mean / worst per generation)", ops: ["merge"],
    metrics: ["evolution/best_fitness", "evolution/avg_fitness", "evolution/worst_fitness"] },
  { title: "Quiet-STaR anti-theater checks (divergence > 0.3, ablation > 0.02, correlation > 0.5)", ops: ["train"],
    metrics: ["anti_theater/divergence", "anti_theater/ablation", "anti_theater/correlation"] },
];
const COLORS = ["#0a66c2", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#57606a"];

let status = null;
let fitnessTarget = null; // parents' mean fitness × 1.2: the seed's +20% gate
let lastSeq = -1;
let serverId = null;
const series = new Map(); // chart index -> Map(label -> Map(at -> value))
const plots = new Map(); // chart index -> uPlot

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function stepOp(id) {
  for (const ph of status?.phases ?? []) for (const s of ph.steps) if (s.id === id) return s.op;
  return null;
}

function progressText(p) {
  if (!p) return "";
  return p.total ? `${p.done} / ${p.total} ${p.unit}` : `${p.done} ${p.unit}`;
}

function renderStatus() {
  $("pipeline").textContent = status.pipeline;
  const run = status.run;
  const runEl = $("run");
  runEl.dataset.status = run ? run.status : "none";
  runEl.textContent = run ? `run ${run.id}: ${run.status}` : "no run yet";
  $("start").disabled = status.running;
  $("resume").disabled = status.running;
  $("pause").disabled = !status.running;
  const dag = $("dag");
  dag.replaceChildren();
  for (const ph of status.phases) {
    const box = el("div", { class: "phase", "data-phase": ph.name },
      el("h3", {}, ph.name, el("span", { class: `state s-${ph.state}` }, ph.state)));
    for (const s of ph.steps) {
      const card = el("div", { class: `step ${s.state}`, "data-step": s.id, "data-state": s.state, title: s.reason },
        el("div", {}, el("span", { class: "id" }, s.id), " ", el("span", { class: `state s-${s.state}` }, s.state)),
        el("div", { class: "meta" }, `${s.op}${s.needs.length ? " ← " + s.needs.join(", ") : ""}`));
      const p = s.progress;
      if (p && (s.state === "running" || s.state === "retrying")) {
        const bar = el("progress", { max: p.total || 1, value: p.total ? p.done : 0 });
        card.append(bar, el("div", { class: "meta progress-text" }, progressText(p)));
      }
      box.append(card);
    }
    dag.append(box);
  }
  const alerts = $("alerts");
  alerts.replaceChildren();
  for (const a of (status.alerts ?? []).slice(-30)) addAlert(a.level, a.step, a.message);
  if (!alerts.children.length) alerts.append(el("li", { class: "none" }, "none"));
}

function addAlert(level, step, message) {
  const alerts = $("alerts");
  alerts.querySelector(".none")?.remove();
  alerts.append(el("li", { class: String(level) }, `${step ?? ""} ${message}`));
  alerts.scrollTop = alerts.scrollHeight;
}

function chartsFor(step, name) {
  const op = stepOp(step);
  return CHARTS.map((c, i) => (c.metrics.includes(name) && c.ops.includes(op) ? i : -1)).filter((i) => i >= 0);
}

function addPoint(step, name, at, value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return [];
  const touched = chartsFor(step, name);
  for (const i of touched) {
    if (!series.has(i)) series.set(i, new Map());
    const label = CHARTS[i].metrics.length > 1 ? `${step} ${name.split("/").pop()}` : step;
    const m = series.get(i);
    if (!m.has(label)) m.set(label, new Map());
    const pts = m.get(label);
    pts.set(at ?? pts.size, value);
  }
  return touched;
}

function drawChart(i) {
  const c = CHARTS[i];
  let box = document.querySelector(`.chart[data-chart="${i}"]`);
  if (!box) {
    box = el("div", { class: "chart", "data-chart": String(i), "data-points": "0" }, el("h3", {}, c.title));
    $("charts").append(box);
  }
  const m = series.get(i) ?? new Map();
  const labels = [...m.keys()].sort();
  const xs = [...new Set(labels.flatMap((l) => [...m.get(l).keys()]))].sort((a, b) => a - b);
  const data = [xs, ...labels.map((l) => xs.map((x) => m.get(l).get(x) ?? null))];
  const points = labels.reduce((n, l) => n + m.get(l).size, 0);
  const shown = [...labels];
  if (i === 2 && fitnessTarget !== null && xs.length) {
    shown.push("+20% over the parents (the seed's gate)");
    data.push(xs.map(() => fitnessTarget));
  }
  box.dataset.points = String(points);
  plots.get(i)?.destroy();
  plots.delete(i);
  box.querySelector(".empty")?.remove();
  if (!points) {
    box.append(el("div", { class: "empty" }, "no points yet"));
    return;
  }
  const width = Math.max(240, box.clientWidth - 16);
  const opts = {
    width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: i === 2 ? "generation" : "step" }, {}],
    series: [{}, ...shown.map((l, k) => ({ label: l, stroke: COLORS[k % COLORS.length], spanGaps: true, dash: l.startsWith("+20%") ? [6, 4] : undefined }))],
  };
  plots.set(i, new uPlot(opts, data, box));
}

function drawCharts(which) {
  for (const i of which ?? CHARTS.keys()) drawChart(i);
}

async function api(path, init) {
  const r = await fetch(path, init);
  const body = await r.json().catch(() => ({}));
  return { ok: r.ok, code: r.status, body };
}

function showMessage(text) {
  const m = $("message");
  m.hidden = !text;
  m.textContent = text ?? "";
}

async function refresh() {
  const r = await api("/api/pipeline/status");
  if (!r.ok) {
    showMessage(`${r.body.error ?? r.code}\n${r.body.diagnostics ?? r.body.hint ?? ""}`);
    return false;
  }
  status = r.body;
  renderStatus();
  renderChecks();
  renderPopulation();
  renderSparsity();
  return true;
}

async function loadSeries() {
  // Finished steps: their recorded series. Steps of a run in progress: its events so far.
  const names = [...new Set(CHARTS.flatMap((c) => c.metrics))];
  for (const ph of status.phases) {
    for (const s of ph.steps) {
      if (!CHARTS.some((c) => c.ops.includes(s.op)) || s.plan !== "cached") continue;
      const r = await api(`/api/steps/${encodeURIComponent(s.id)}/metrics`);
      if (!r.ok) continue;
      for (const [name, pts] of Object.entries(r.body.series)) {
        if (names.includes(name)) for (const [at, v] of pts) addPoint(s.id, name, at, v);
      }
    }
  }
  if (status.running && status.run) {
    const r = await api(`/api/runs/${encodeURIComponent(status.run.id)}/events?limit=1000000`);
    if (r.ok) for (const e of r.body.events) if (e.event === "metric") addPoint(e.step, e.name, e.at, e.value);
  }
  drawCharts();
}

function hasStep(phase, op) {
  return (status?.phases ?? []).some((p) => p.name === phase && p.steps.some((s) => s.op === op && s.plan === "cached"));
}

function fmt(v) {
  return typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) : String(v ?? "–");
}

/** Every phase with a validate step that ran: each check, its threshold and every model's
 * value (Phase 1's diversity gates, Phase 3's per-strategy baking accuracies, …). */
async function renderChecks() {
  const box = $("checks");
  const phases = (status?.phases ?? []).filter((p) => p.steps.some((s) => s.op === "validate" && s.plan === "cached"));
  box.hidden = !phases.length;
  const body = box.querySelector("div");
  const parts = [];
  for (const ph of phases) {
    const r = await api(`/api/phases/${encodeURIComponent(ph.name)}/checks`);
    if (!r.ok) continue;
    for (const v of r.body.validations) {
      if (!v.ran) continue;
      parts.push(el("h3", {}, `${v.step} ${v.passed ? "passed" : "failed"}`));
      for (const c of v.checks) {
        const measured = c.measured.map((m) => `${fmt(m.value)} ${m.passed ? "✓" : "✗"}`).join(", ");
        const row = el("div", { class: "check", "data-metric": c.metric },
          el("div", {}, el("span", { class: "id" }, c.metric), ` ${c.aggregate} ${c.op} ${fmt(c.threshold)} (${c.severity}): ${measured || "not measured"}`));
        const vals = Object.entries(c.per_input);
        const top = Math.max(Math.abs(c.threshold), ...vals.map(([, x]) => Math.abs(x))) || 1;
        for (const [id, x] of vals) {
          row.append(el("div", { class: "bar" },
            el("span", { class: "label" }, id),
            el("span", { class: "fill", style: `width:${(100 * Math.abs(x) / top).toFixed(1)}%` }),
            el("span", { class: "num" }, fmt(x))));
        }
        parts.push(row);
      }
    }
  }
  body.replaceChildren(...parts);
}

/** Phase 2: generations, the best candidates and the champion, from the evolution's own log. */
async function renderPopulation() {
  const box = $("population");
  if (!hasStep("evomerge", "merge")) { box.hidden = true; return; }
  const r = await api("/api/phases/evomerge/population");
  if (!r.ok) return;
  const evo = r.body.evolutions.find((e) => e.candidates);
  if (!evo) { box.hidden = true; return; }
  box.hidden = false;
  if (typeof evo.parents_avg_fitness === "number") fitnessTarget = evo.parents_avg_fitness * 1.2;
  for (const g of evo.generations ?? []) {
    addPoint(evo.step, "evolution/best_fitness", g.generation, g.best_fitness);
    addPoint(evo.step, "evolution/avg_fitness", g.generation, g.avg_fitness);
    addPoint(evo.step, "evolution/worst_fitness", g.generation, g.worst_fitness);
  }
  drawCharts([2]);
  const champion = evo.lineage?.champion?.id;
  const rows = [...evo.candidates]
    .filter((c) => c.fitness)
    .sort((a, b) => (b.fitness.fitness ?? 0) - (a.fitness.fitness ?? 0))
    .slice(0, 12);
  const table = el("table", {}, el("tr", {}, ...["id", "generation", "kind", "fitness", ""].map((h) => el("th", {}, h))));
  for (const c of rows) {
    table.append(el("tr", { class: c.id === champion ? "champion" : "" },
      el("td", {}, String(c.id)), el("td", {}, String(c.generation)), el("td", {}, c.kind),
      el("td", {}, fmt(c.fitness.fitness)), el("td", {}, c.id === champion ? "champion" : "")));
  }
  // How the champion is made from the input models (its lineage), and what the search tried.
  const names = evo.models ?? [];
  const input = (k) => names[k] ?? `input ${k}`;
  const rec = evo.lineage?.champion?.recipe ?? {};
  const tree = el("ul", { class: "lineage" });
  const item = (text, children = []) => {
    const li = el("li", {}, text);
    if (children.length) li.append(el("ul", {}, ...children));
    return li;
  };
  const leaves = (models, weights) => models.map((m, k) => item(`${input(m)} × ${fmt(weights[k])}`));
  let how;
  switch (rec.kind) {
    case "task":
      how = item(`task arithmetic (${rec.method}) over the base, λ ${fmt(rec.lambda)}${rec.lambda_rest != null ? ` (blocks) / ${fmt(rec.lambda_rest)} (rest)` : ""}${rec.method === "linear" ? "" : `, density ${fmt(rec.density)}`}`,
        [item("base"), ...leaves([0, 1, 2], rec.weights)]);
      break;
    case "linear":
      how = item("weighted average", leaves(rec.models, rec.weights));
      break;
    case "combo":
      how = item(`combo ${rec.combo}`, names.map((n) => item(n)));
      break;
    case "input":
      how = item(input(rec.index));
      break;
    default:
      how = item(rec.kind ?? "–");
  }
  tree.append(item(`champion #${evo.lineage?.champion?.id ?? "?"} (${evo.lineage?.champion?.kind ?? ""})`, [how]));
  const usage = new Map();
  for (const c of evo.candidates) {
    const k = c.recipe?.kind === "combo" ? `combo ${c.recipe.combo}` : c.kind;
    const u = usage.get(k) ?? { n: 0, best: -Infinity };
    u.n += 1;
    u.best = Math.max(u.best, c.fitness?.fitness ?? -Infinity);
    usage.set(k, u);
  }
  const usageTable = el("table", {}, el("tr", {}, ...["candidates of kind", "count", "best fitness"].map((h) => el("th", {}, h))));
  for (const [k, u] of [...usage].sort((a, b) => b[1].best - a[1].best)) {
    usageTable.append(el("tr", {}, el("td", {}, k), el("td", {}, String(u.n)), el("td", {}, Number.isFinite(u.best) ? fmt(u.best) : "–")));
  }
  const body = box.querySelector("div");
  const gain = typeof evo.improvement_over_parents === "number" ? ` · improvement over the parents ${(100 * evo.improvement_over_parents).toFixed(1)}% (the seed's gate: 20%)` : "";
  body.replaceChildren(
    el("p", { class: "meta" }, `${evo.step}: ${evo.candidates.length} candidates, stopped: ${evo.stop_reason ?? "–"}${gain}`),
    el("h3", {}, "Lineage of the champion"), tree,
    el("h3", {}, "What the search tried"), usageTable,
    el("h3", {}, "Best candidates"), table);
}

/** Phase 4: every tensor's precision and ternary split, and a heatmap of one ternary matrix. */
async function renderSparsity() {
  const box = $("sparsity");
  if (!hasStep("bitnet", "quantize")) { box.hidden = true; return; }
  const r = await api("/api/phases/bitnet/sparsity");
  if (!r.ok) return;
  const q = r.body.quantizations.find((x) => x.ran);
  if (!q) { box.hidden = true; return; }
  box.hidden = false;
  const table = el("table", {}, el("tr", {}, ...["tensor", "precision", "params", "−1 / 0 / +1", "sparsity"].map((h) => el("th", {}, h))));
  for (const t of q.tensors) {
    const split = t.split ? `${t.split.minus} / ${t.split.zero} / ${t.split.plus}` : "";
    table.append(el("tr", {}, el("td", { class: "id" }, t.name), el("td", {}, t.precision),
      el("td", {}, String(t.params)), el("td", {}, split), el("td", {}, t.sparsity === null ? "" : fmt(t.sparsity))));
  }
  const body = box.querySelector("div");
  body.replaceChildren(table);
  const h = q.heatmap;
  if (h) {
    const cell = 8;
    const canvas = el("canvas", { width: h.cell_cols * cell, height: h.cell_rows * cell, class: "heatmap" });
    const g = canvas.getContext("2d");
    h.zeros.forEach((row, i) => row.forEach((z, j) => {
      const shade = Math.round(255 * (1 - z));
      g.fillStyle = `rgb(${shade},${shade},255)`;
      g.fillRect(j * cell, i * cell, cell, cell);
    }));
    body.append(el("p", { class: "meta" }, `${h.tensor} (${h.rows} × ${h.cols}), share of zeros per block of ${Math.ceil(h.rows / h.cell_rows)} × ${Math.ceil(h.cols / h.cell_cols)}: darker blue = more zeros`), canvas);
  }
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 150);
}

function onEvent(ev) {
  if (typeof ev.seq === "number") lastSeq = ev.seq;
  switch (ev.type) {
    case "hello":
      if (serverId && ev.server_id !== serverId) location.reload();
      serverId = ev.server_id;
      break;
    case "reset":
      refresh();
      break;
    case "phase:progress": {
      const card = document.querySelector(`.step[data-step="${CSS.escape(ev.step)}"]`);
      if (!card) { refreshSoon(); break; }
      let bar = card.querySelector("progress");
      let text = card.querySelector(".progress-text");
      if (!bar) {
        bar = el("progress");
        text = el("div", { class: "meta progress-text" });
        card.append(bar, text);
      }
      bar.max = ev.data.total || 1;
      bar.value = ev.data.total ? ev.data.done : 0;
      text.textContent = progressText(ev.data);
      if (card.dataset.state !== "running") refreshSoon();
      break;
    }
    case "phase:metric":
      drawCharts(addPoint(ev.step, ev.data.name, ev.data.at, ev.data.value));
      break;
    case "phase:alert":
      addAlert(ev.data.level, ev.step, ev.data.message);
      break;
    case "phase:complete":
      refreshSoon();
      break;
    case "hardware:update": {
      const d = ev.data;
      const gib = (b) => (b / 2 ** 30).toFixed(1);
      $("hardware").textContent =
        `CPU ${d.cpu.usage_percent.toFixed(0)}% of ${d.cpu.cores} · memory ${gib(d.memory.total_bytes - d.memory.available_bytes)} / ${gib(d.memory.total_bytes)} GiB` +
        (d.disk ? ` · disk free ${gib(d.disk.available_bytes)} GiB` : "");
      break;
    }
  }
}

function connect(since) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/events?since=${since}`);
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = () => setTimeout(() => connect(lastSeq + 1), 1000);
}

async function control(action) {
  showMessage(null);
  const r = await api(`/api/pipeline/${action}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  if (!r.ok) showMessage(`${r.body.error}\n${r.body.output ?? r.body.hint ?? ""}`);
  refreshSoon();
}

async function main() {
  for (const a of ["start", "pause", "resume"]) $(a).addEventListener("click", () => control(a));
  if (!(await refresh())) return;
  lastSeq = status.next_seq - 1;
  serverId = status.server_id;
  connect(status.next_seq);
  await loadSeries();
  setInterval(refresh, 5000);
  window.addEventListener("resize", () => drawCharts());
}

main();
