/* Geosolver web page: upload a photo to /api/locate, show the guess on a Leaflet map.
   Plain JS, no build step. Leaflet is served by the app itself (static/vendor/leaflet). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const state = { file: null, maxBytes: null, busy: false };

  // ---------------------------------------------------------------- map
  const map = L.map("map", { worldCopyJump: true, minZoom: 1, zoomSnap: 0.5 }).setView([20, 0], 2);
  // A plain world outline lies under the tiles, so the map still reads when tiles cannot load.
  map.createPane("outline").style.zIndex = 150;
  fetch("static/vendor/world/countries-110m.geojson")
    .then((r) => (r.ok ? r.json() : null))
    .then((gj) => {
      if (gj) L.geoJSON(gj, { pane: "outline", interactive: false, style: { color: "#b8b2a7", weight: 0.7, fillColor: "#f4f1ea", fillOpacity: 1 } }).addTo(map);
    })
    .catch(() => {});
  let tileErrors = 0;
  const tiles = L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
    maxZoom: 18,
    attribution: '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors',
  });
  tiles.on("tileerror", () => {
    tileErrors += 1;
    if (tileErrors >= 2) $("tile-note").hidden = false;
  });
  tiles.on("tileload", () => { $("tile-note").hidden = true; });
  tiles.addTo(map);

  const galleryLayer = L.layerGroup().addTo(map);
  const resultLayer = L.layerGroup().addTo(map);
  const canvas = L.canvas({ padding: 0.5 });

  fetch("api/gallery/points?limit=3000")
    .then((r) => (r.ok ? r.json() : null))
    .then((d) => {
      if (!d) return;
      for (const [lat, lon] of d.points) {
        L.circleMarker([lat, lon], { renderer: canvas, radius: 1.6, stroke: false, fillColor: "#64748b", fillOpacity: 0.35, interactive: false }).addTo(galleryLayer);
      }
    })
    .catch(() => {});

  // viridis, reversed: the most similar neighbours are the darkest
  const RAMP = ["#fde725", "#5ec962", "#21918c", "#3b528b", "#440154"];
  function rampColor(t) {
    t = Math.min(1, Math.max(0, t));
    const x = t * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const f = x - i;
    const a = hex(RAMP[i]), b = hex(RAMP[i + 1]);
    const c = a.map((v, j) => Math.round(v + (b[j] - v) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  function hex(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

  function pinIcon(cls, label) {
    return L.divIcon({ className: `gs-pin ${cls}`, html: `<span><b>${label}</b></span>`, iconSize: [30, 42], iconAnchor: [15, 40], tooltipAnchor: [0, -34] });
  }

  // ---------------------------------------------------------------- helpers
  const fmt = (x, d = 1) => Number(x).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });
  function coordText(lat, lon) {
    return `${fmt(Math.abs(lat), 3)}° ${lat >= 0 ? "N" : "S"}, ${fmt(Math.abs(lon), 3)}° ${lon >= 0 ? "E" : "W"}`;
  }
  let regionNames = null;
  try { regionNames = new Intl.DisplayNames(["en"], { type: "region" }); } catch (e) { regionNames = null; }
  function countryName(cc) {
    if (!cc) return "unknown country";
    try { return (regionNames && regionNames.of(cc)) || cc; } catch (e) { return cc; }
  }
  function placeText(p) {
    if (!p || !p.name) return "somewhere remote";
    const parts = [p.name];
    if (p.admin1 && p.admin1 !== p.name) parts.push(p.admin1);
    return parts.join(", ") + (p.km > 25 ? ` (${fmt(p.km, 0)} km away)` : "");
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function setState(s) { document.body.dataset.state = s; }

  // ---------------------------------------------------------------- health
  fetch("api/health")
    .then((r) => r.json())
    .then((h) => {
      state.maxBytes = h.max_upload_bytes;
      const model = String(h.model.name || "?").split("/").slice(-2).join("/");
      $("model-info").textContent = `${model} · gallery of ${h.gallery.size.toLocaleString("en-US")} photos`;
      $("k-input").max = h.max_k;
      $("k-input").value = h.defaults.k;
      $("strategy-input").value = h.defaults.strategy;
    })
    .catch(() => { $("model-info").textContent = "server unreachable"; });

  // ---------------------------------------------------------------- upload
  function showError(msg) {
    const el = $("error");
    el.textContent = msg;
    el.hidden = false;
    setState("error");
  }

  async function locate(file) {
    if (!file) return;
    state.file = file;
    $("error").hidden = true;
    if (state.maxBytes && file.size > state.maxBytes) {
      showError(`This file is ${fmt(file.size / 1e6)} MB; the server accepts up to ${fmt(state.maxBytes / 1e6)} MB.`);
      return;
    }
    const url = URL.createObjectURL(file);
    const img = $("photo");
    img.onload = () => URL.revokeObjectURL(url);
    img.onerror = () => { URL.revokeObjectURL(url); img.hidden = true; $("drop-hint").hidden = false; };
    img.src = url;
    img.hidden = false;
    $("drop-hint").hidden = true;
    $("spinner").hidden = false;
    setState("busy");
    const body = new FormData();
    body.append("file", file, file.name || "photo");
    const params = new URLSearchParams({ k: $("k-input").value, strategy: $("strategy-input").value });
    try {
      const r = await fetch(`api/locate?${params}`, { method: "POST", body });
      const data = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
      if (!r.ok) {
        const d = data.detail;
        resultLayer.clearLayers();
        showError(Array.isArray(d) ? d.map((e) => `${(e.loc || []).slice(-1)[0]}: ${e.msg}`).join("; ") : String(d || `HTTP ${r.status}`));
        $("result").hidden = true;
        return;
      }
      render(data);
      setState("done");
    } catch (e) {
      showError(`Could not reach the server: ${e}`);
    } finally {
      $("spinner").hidden = true;
    }
  }

  function render(d) {
    resultLayer.clearLayers();
    const nb = d.neighbours || [];
    const sims = nb.map((n) => n.similarity);
    const lo = Math.min(...sims), hi = Math.max(...sims);
    $("sim-min").textContent = sims.length ? fmt(lo, 2) : "low";
    $("sim-max").textContent = sims.length ? fmt(hi, 2) : "high";
    const bounds = [[d.lat, d.lon]];
    if (d.head) drawHead(d.head, bounds);
    // least similar first, so the best ones are drawn on top
    nb.map((n, i) => ({ n, i })).reverse().forEach(({ n, i }) => {
      const t = hi > lo ? (n.similarity - lo) / (hi - lo) : 1;
      L.circleMarker([n.lat, n.lon], {
        radius: 6 + 3 * t, color: "#ffffff", weight: 1.5, fillColor: rampColor(t), fillOpacity: 0.95, className: "gs-neighbour",
      }).bindTooltip(`#${i + 1} · ${esc(n.id)}<br>similarity ${fmt(n.similarity, 3)} · ${fmt(n.distance_km, 0)} km from the guess`).addTo(resultLayer);
      bounds.push([n.lat, n.lon]);
    });
    L.marker([d.lat, d.lon], { icon: pinIcon("gs-guess-marker", "?"), zIndexOffset: 1000 })
      .bindTooltip(`guess: ${esc(placeText(d.place))}`).addTo(resultLayer);

    $("country-badge").textContent = d.country || "??";
    $("place").textContent = placeText(d.place);
    $("country").textContent = countryName(d.country);
    $("guess-coords").textContent = coordText(d.lat, d.lon);
    $("confidence").textContent = `${fmt(100 * d.confidence, 0)}%`;
    $("confidence-bar").style.width = `${Math.round(100 * d.confidence)}%`;

    const t = d.truth;
    if (t) {
      L.marker([t.lat, t.lon], { icon: pinIcon("gs-truth-marker", "✓"), zIndexOffset: 900 })
        .bindTooltip(`true spot: ${esc(placeText(t.place))}`).addTo(resultLayer);
      L.polyline([[t.lat, t.lon], [d.lat, d.lon]], { color: "#111827", weight: 2, dashArray: "6 6", opacity: 0.7 })
        .bindTooltip(`${fmt(t.km, 0)} km`, { permanent: true, direction: "center", className: "km-label" }).addTo(resultLayer);
      bounds.push([t.lat, t.lon]);
      $("truth-place").textContent = `${placeText(t.place)} · ${coordText(t.lat, t.lon)}`;
      $("truth-km").textContent = `${fmt(t.km, t.km < 10 ? 1 : 0)} km`;
      $("geoscore").textContent = `${fmt(t.geoscore, 0)} / 5000`;
      $("geoscore-bar").style.width = `${(100 * t.geoscore) / 5000}%`;
    }
    $("truth").hidden = !t;
    $("no-truth").hidden = !!t;

    $("neighbour-list").innerHTML = nb.slice(0, 5).map((n, i) => {
      const tt = hi > lo ? (n.similarity - lo) / (hi - lo) : 1;
      return `<li><span class="dot" style="background:${rampColor(tt)}"></span><span class="nid">${esc(n.id)}</span>` +
        `<span class="muted">${fmt(n.similarity, 3)} · ${fmt(n.distance_km, 0)} km</span></li>`;
    }).join("");
    $("osm-link").href = d.osm_url;
    $("timing").textContent = d.timing_ms ? `${fmt(d.timing_ms.read_decode + d.timing_ms.model, 0)} ms` : "";
    $("result").hidden = false;
    map.fitBounds(L.latLngBounds(bounds).pad(0.25), { maxZoom: 7, animate: false });
  }

  // The location head's most probable cells (geosolver serve --head): rectangles, darker = more
  // probable (relative to the top cell), drawn under the neighbours; its own guess as a ring.
  function drawHead(h, bounds) {
    const cells = h.cells || [];
    const top = Math.max(...cells.map((c) => c.p), 1e-12);
    cells.slice().reverse().forEach((c) => {
      const [s, w, n, e] = c.bounds;
      const t = c.p / top;
      L.rectangle([[s, w], [n, e]], {
        color: rampColor(t), weight: 1, opacity: 0.6, fillColor: rampColor(t), fillOpacity: 0.1 + 0.4 * t, className: "gs-head-cell",
      }).bindTooltip(`${h.kind} head${h.fused ? " (fused with the vote)" : ""}<br>${fmt(100 * c.p, 1)}% in this cell`).addTo(resultLayer);
    });
    const g = h.predicted;
    if (g) {
      L.circleMarker([g.lat, g.lon], { radius: 9, color: "#111827", weight: 2, fill: false, className: "gs-head-guess" })
        .bindTooltip(`${h.kind} head's own guess · ${fmt(100 * g.confidence, 0)}%`).addTo(resultLayer);
      bounds.push([g.lat, g.lon]);
    }
  }

  // ---------------------------------------------------------------- inputs
  const dz = $("dropzone");
  $("file-input").addEventListener("change", (e) => locate(e.target.files[0]));
  ["dragenter", "dragover"].forEach((ev) => dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.add("over"); }));
  ["dragleave", "drop"].forEach((ev) => dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.remove("over"); }));
  dz.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) locate(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => {
    const f = [...(e.clipboardData || {}).files || []].find((x) => x.type.startsWith("image/"));
    if (f) locate(f);
  });
  ["k-input", "strategy-input"].forEach((id) => $(id).addEventListener("change", () => { if (state.file) locate(state.file); }));

  // ---------------------------------------------------------------- shared with play.js (Play mode)
  window.geosolverPage = { map, galleryLayer, resultLayer, pinIcon, fmt, coordText, placeText, countryName, esc };
})();
