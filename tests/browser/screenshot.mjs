// Screenshot of a running `forge serve` dashboard, for the README:
//   node tests/browser/screenshot.mjs 'http://127.0.0.1:8420/?token=…' out.png [width] [height|full]
// Uses Debian's chromium (CHROMIUM, default /usr/bin/chromium) through playwright-core.
import { chromium } from "playwright-core";

const [url, out, width = "1280", height = "900"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node screenshot.mjs URL OUT.png [WIDTH] [HEIGHT|full]");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const full = height === "full";
const page = await browser.newPage({ viewport: { width: Number(width), height: full ? 900 : Number(height) } });
const errors = [];
page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
page.on("pageerror", (e) => errors.push(String(e)));
await page.goto(url);
await page.waitForSelector("[data-step]");
// Let the panels and charts that load after the status fill in.
await page.waitForLoadState("networkidle");
await page.waitForTimeout(1500);
await page.screenshot({ path: out, fullPage: full });
await browser.close();
if (errors.length) {
  console.error(`console errors:\n${errors.join("\n")}`);
  process.exit(1);
}
console.log(`wrote ${out}`);
