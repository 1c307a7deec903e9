// Browser check of the `geosolver serve` page, driven by playwright-core with Debian's chromium.
//
//   node locate.mjs --url http://127.0.0.1:8000/ --image photo.jpg --screenshot out.png [--chromium /usr/bin/chromium]
//
// Loads the page, uploads the photo through the file input, waits for the result and prints one
// JSON object with what the page shows (texts, marker counts, photo size, console errors,
// failed requests). Exit code 0 if the page reached the "done" state, 1 otherwise.
import { arg, launch } from "./browser.mjs";

const url = arg("url");
const image = arg("image");
const shot = arg("screenshot");
const exe = arg("chromium", "/usr/bin/chromium");
const timeout = Number(arg("timeout-ms", "60000"));

const report = { consoleErrors: [], failedRequests: [], state: null };
const { browser, close } = await launch(exe);
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => report.consoleErrors.push(String(e)));
  page.on("requestfailed", (r) => report.failedRequests.push(r.url()));
  await page.goto(url, { waitUntil: "load", timeout });
  await page.waitForFunction(() => /gallery of/.test(document.getElementById("model-info").textContent), null, { timeout });
  await page.setInputFiles("#file-input", image);
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout });
  await page.waitForTimeout(400); // let the map finish its redraw
  report.state = await page.evaluate(() => document.body.dataset.state);
  Object.assign(report, await page.evaluate(() => {
    const t = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
    const vis = (id) => { const e = document.getElementById(id); return !!e && !e.hidden && e.getClientRects().length > 0; };
    const img = document.getElementById("photo");
    return {
      leaflet: window.L ? window.L.version : null,
      modelInfo: t("model-info"),
      error: vis("error") ? t("error") : null,
      resultVisible: vis("result"),
      photoVisible: vis("photo"),
      truthVisible: vis("truth"),
      place: t("place"), country: t("country"), badge: t("country-badge"),
      guessCoords: t("guess-coords"), confidence: t("confidence"),
      truthKm: t("truth-km"), geoscore: t("geoscore"), truthPlace: t("truth-place"),
      neighbourItems: document.querySelectorAll("#neighbour-list li").length,
      guessMarkers: document.querySelectorAll(".gs-guess-marker").length,
      truthMarkers: document.querySelectorAll(".gs-truth-marker").length,
      neighbourMarkers: document.querySelectorAll("path.gs-neighbour").length,
      headCells: document.querySelectorAll("path.gs-head-cell").length,
      headGuess: document.querySelectorAll("path.gs-head-guess").length,
      outlinePaths: document.querySelectorAll(".leaflet-outline-pane path").length,
      photo: { naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, shownWidth: img.clientWidth, shownHeight: img.clientHeight },
    };
  }));
  if (shot) await page.screenshot({ path: shot });
} finally {
  await close();
}
console.log(JSON.stringify(report));
process.exit(report.state === "done" ? 0 : 1);
