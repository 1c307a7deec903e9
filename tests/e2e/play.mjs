// Browser check of the `geosolver serve --play` duel, driven by playwright-core with Debian's chromium.
//
//   node play.mjs --url http://127.0.0.1:8000/ --screenshot out.png [--chromium /usr/bin/chromium] [--rounds 5]
//
// Opens the page, switches to Play, and plays a whole game: per round it waits for the photo,
// clicks the map (in round 1 twice, to move the guess), presses Guess, captures the guess request
// and the API's answer (response listener) and reads what the page shows. After the last round it
// reads the final summary, takes the screenshot, then presses "New game". Prints one JSON object;
// exit code 0 if the game reached the "over" state, 1 otherwise.
import { arg, launch } from "./browser.mjs";

const url = arg("url");
const shot = arg("screenshot");
const exe = arg("chromium", "/usr/bin/chromium");
const timeout = Number(arg("timeout-ms", "60000"));
const ROUNDS = Number(arg("rounds", "5"));
// where to click, as fractions of the map's width/height (first entry of round 1 is then moved)
const CLICKS = [[0.30, 0.35], [0.52, 0.30], [0.70, 0.62], [0.45, 0.55], [0.25, 0.68], [0.62, 0.40]];

const report = { consoleErrors: [], failedRequests: [], rounds: [], state: null };
const { browser, close } = await launch(exe);
const readTexts = () => {
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
  const vis = (id) => { const e = document.getElementById(id); return !!e && !e.hidden && e.getClientRects().length > 0; };
  return {
    round: t("play-round"), truthPlace: t("play-truth-place"),
    youKm: t("play-you-km"), youScore: t("play-you-score"), modelKm: t("play-model-km"), modelScore: t("play-model-score"),
    verdict: t("play-verdict"), totalYou: t("play-total-you"), totalModel: t("play-total-model"),
    resultVisible: vis("play-result"), summaryVisible: vis("play-summary"), nextVisible: vis("play-next"),
    youMarkers: document.querySelectorAll(".gs-you-marker").length,
    modelMarkers: document.querySelectorAll(".gs-model-marker").length,
    truthMarkers: document.querySelectorAll(".gs-truth-marker").length,
    kmLabels: [...document.querySelectorAll(".km-label")].map((e) => e.textContent.trim()),
  };
};
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => report.consoleErrors.push(String(e)));
  page.on("requestfailed", (r) => report.failedRequests.push(r.url()));
  const answers = [];
  page.on("response", async (r) => {
    if (/\/api\/round\/[^/]+\/guess$/.test(r.url())) {
      answers.push({ status: r.status(), sent: JSON.parse(r.request().postData() || "null"), body: await r.json().catch(() => null) });
    }
  });
  const photoResponses = [];
  page.on("response", (r) => {
    if (/\/api\/round\/[^/]+\/photo$/.test(r.url())) photoResponses.push({ status: r.status(), type: r.headers()["content-type"] });
  });
  await page.goto(url, { waitUntil: "load", timeout });
  report.playTabHiddenAtFirst = await page.evaluate(() => document.getElementById("tab-play").hidden);
  await page.waitForSelector("#tab-play:not([hidden])", { timeout });
  await page.click("#tab-play");
  report.locatePanelHidden = await page.evaluate(() => document.getElementById("locate-panel").hidden);
  const box = await page.locator("#map").boundingBox();
  for (let i = 0; i < ROUNDS; i++) {
    await page.waitForFunction(() => ["guessing", "error"].includes(document.body.dataset.playState), null, { timeout });
    if ((await page.evaluate(() => document.body.dataset.playState)) === "error") break;
    const rec = { photo: await page.evaluate(() => { const im = document.getElementById("play-photo"); return { w: im.naturalWidth, h: im.naturalHeight, shown: im.clientWidth > 0 }; }) };
    rec.guessDisabledBeforeClick = await page.evaluate(() => document.getElementById("play-guess").disabled);
    const clicks = i === 0 ? [CLICKS[0], CLICKS[5]] : [CLICKS[i]];
    rec.markersAfterClicks = [];
    for (const [fx, fy] of clicks) {
      const x = Math.round(box.width * fx), y = Math.round(box.height * fy);
      // the point under the cursor, asked of the map itself before clicking
      rec.expected = await page.evaluate(([x, y]) => {
        const ll = window.geosolverPage.map.containerPointToLatLng([x, y]).wrap();
        return { lat: ll.lat, lon: ll.lng };
      }, [x, y]);
      await page.mouse.click(box.x + x, box.y + y);
      rec.markersAfterClicks.push(await page.evaluate(() => document.querySelectorAll(".gs-you-marker").length));
    }
    const n = answers.length;
    await page.click("#play-guess");
    await page.waitForFunction(() => ["scored", "over", "error"].includes(document.body.dataset.playState), null, { timeout });
    while (answers.length <= n) await page.waitForTimeout(20);
    rec.api = answers[n];
    rec.state = await page.evaluate(() => document.body.dataset.playState);
    await page.waitForTimeout(150);
    rec.page = await page.evaluate(readTexts);
    report.rounds.push(rec);
    if (rec.state === "scored") await page.click("#play-next");
  }
  report.state = await page.evaluate(() => document.body.dataset.playState);
  report.photoResponses = photoResponses;
  report.summary = await page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent.trim();
    return {
      winner: t("play-winner"), finalYou: t("play-final-you"), finalModel: t("play-final-model"),
      rows: [...document.querySelectorAll("#play-rounds tr")].map((tr) => [...tr.children].map((td) => td.textContent.trim())),
    };
  });
  await page.waitForTimeout(300);
  if (shot) await page.screenshot({ path: shot });
  // a new game starts from zero
  await page.click("#play-new");
  await page.waitForFunction(() => document.body.dataset.playState === "guessing", null, { timeout });
  report.newGame = await page.evaluate(readTexts);
  // and the locate page is still there
  await page.click("#tab-locate");
  report.afterBack = await page.evaluate(() => ({ mode: document.body.dataset.mode, locateHidden: document.getElementById("locate-panel").hidden, playHidden: document.getElementById("play-panel").hidden }));
} finally {
  await close();
}
console.log(JSON.stringify(report));
process.exit(report.state === "over" ? 0 : 1);
