/* Geosolver Play mode: a GeoGuessr duel against the model (served with `geosolver serve --play QUERIES`).
   GET api/round -> photo; click the map to place (and move) a guess; POST api/round/{token}/guess;
   show the truth, both guesses, distances and Geoscores; five rounds make a game.
   State for tests: document.body.dataset.mode ("locate" | "play") and .playState
   ("loading" | "guessing" | "sending" | "scored" | "over" | "error"). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const page = window.geosolverPage;
  if (!page) return;
  const { map, galleryLayer, resultLayer, pinIcon, fmt, coordText, placeText, esc } = page;
  const ROUNDS = 5;
  const layer = L.layerGroup();
  const game = { on: false, round: 0, token: null, guess: null, marker: null, results: [], busy: false };

  const kmText = (km) => `${fmt(km, km < 10 ? 1 : 0)} km`;
  const scoreText = (s) => fmt(s, 0);
  function setPlayState(s) { document.body.dataset.playState = s; }

  // ---------------------------------------------------------------- mode switch
  fetch("api/play")
    .then((r) => (r.ok ? r.json() : null))
    .then((info) => {
      if (!info || !info.enabled) return;
      $("tab-play").hidden = false;
      $("play-note").textContent = `${info.queries.toLocaleString("en-US")} photos in play · the model votes with k=${info.k} (${info.strategy}), ` +
        "never seeing the photo itself in its gallery";
      if (location.hash === "#play") setMode("play");
    })
    .catch(() => {});

  function setMode(mode) {
    const play = mode === "play";
    document.body.dataset.mode = mode;
    $("tab-play").classList.toggle("active", play);
    $("tab-locate").classList.toggle("active", !play);
    $("tab-play").setAttribute("aria-selected", String(play));
    $("tab-locate").setAttribute("aria-selected", String(!play));
    $("play-panel").hidden = !play;
    $("locate-panel").hidden = play;
    $("play-legend").hidden = !play;
    $("legend").hidden = play;
    if (play) {
      map.removeLayer(galleryLayer);
      map.removeLayer(resultLayer);
      layer.addTo(map);
      if (!game.on) newGame();
    } else {
      map.removeLayer(layer);
      galleryLayer.addTo(map);
      resultLayer.addTo(map);
    }
    setTimeout(() => map.invalidateSize(), 0);
  }
  $("tab-play").addEventListener("click", () => setMode("play"));
  $("tab-locate").addEventListener("click", () => setMode("locate"));
  document.body.dataset.mode = "locate";

  // ---------------------------------------------------------------- a game of five rounds
  function newGame() {
    game.on = true;
    game.round = 0;
    game.results = [];
    $("play-summary").hidden = true;
    updateTotals();
    nextRound();
  }

  function showError(msg) {
    $("play-error").textContent = msg;
    $("play-error").hidden = false;
    $("play-spinner").hidden = true;
    setPlayState("error");
  }

  function detailOf(data, status) {
    const d = data && data.detail;
    return Array.isArray(d) ? d.map((e) => e.msg).join("; ") : String(d || `HTTP ${status}`);
  }

  async function nextRound() {
    game.round += 1;
    game.token = null;
    game.guess = null;
    game.marker = null;
    layer.clearLayers();
    $("play-round").textContent = `Round ${game.round} / ${ROUNDS}`;
    $("play-result").hidden = true;
    $("play-error").hidden = true;
    $("play-guess").hidden = false;
    $("play-guess").disabled = true;
    $("play-hint").hidden = false;
    $("play-photo").hidden = true;
    $("play-spinner").hidden = false;
    setPlayState("loading");
    map.setView([20, 0], 2, { animate: false });
    try {
      const r = await fetch("api/round", { cache: "no-store" });
      const data = await r.json().catch(() => null);
      if (!r.ok) { showError(detailOf(data, r.status)); return; }
      game.token = data.token;
      const img = $("play-photo");
      img.onload = () => { $("play-spinner").hidden = true; img.hidden = false; setPlayState("guessing"); };
      img.onerror = () => showError("The round's photo could not be loaded; try a new game.");
      img.src = data.photo_url;
    } catch (e) {
      showError(`Could not reach the server: ${e}`);
    }
  }

  map.on("click", (e) => {
    if (document.body.dataset.mode !== "play" || document.body.dataset.playState !== "guessing") return;
    placeGuess(e.latlng.wrap());
  });

  function placeGuess(ll) {
    game.guess = { lat: ll.lat, lon: ll.lng };
    if (!game.marker) {
      game.marker = L.marker(ll, { icon: pinIcon("gs-you-marker", "you"), draggable: true, zIndexOffset: 1000 }).addTo(layer);
      game.marker.on("dragend", () => {
        const p = game.marker.getLatLng().wrap();
        game.guess = { lat: p.lat, lon: p.lng };
      });
    } else {
      game.marker.setLatLng(ll);
    }
    $("play-guess").disabled = false;
  }

  $("play-guess").addEventListener("click", async () => {
    if (!game.guess || !game.token || document.body.dataset.playState !== "guessing") return;
    setPlayState("sending");
    $("play-guess").disabled = true;
    try {
      const r = await fetch(`api/round/${encodeURIComponent(game.token)}/guess`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(game.guess),
      });
      const data = await r.json().catch(() => null);
      if (!r.ok) { showError(detailOf(data, r.status)); return; }
      showRound(data);
    } catch (e) {
      showError(`Could not reach the server: ${e}`);
    }
  });

  function showRound(d) {
    const t = d.truth, you = d.player, model = d.model;
    game.results.push({ you: you.geoscore, model: model.geoscore, youKm: you.km, modelKm: model.km });
    if (game.marker) { game.marker.dragging.disable(); game.marker.remove(); }
    layer.clearLayers();
    const line = (a, color) => L.polyline([[t.lat, t.lon], [a.lat, a.lon]], { color, weight: 2.5, dashArray: "6 6", opacity: 0.85 })
      .bindTooltip(kmText(a.km), { permanent: true, direction: "center", className: "km-label" }).addTo(layer);
    line(model, "#7c3aed");
    line(you, "#2563eb");
    L.marker([model.lat, model.lon], { icon: pinIcon("gs-model-marker", "AI"), zIndexOffset: 800 }).bindTooltip("the model's guess").addTo(layer);
    L.marker([you.lat, you.lon], { icon: pinIcon("gs-you-marker", "you"), zIndexOffset: 900 }).bindTooltip("your guess").addTo(layer);
    L.marker([t.lat, t.lon], { icon: pinIcon("gs-truth-marker", "✓"), zIndexOffset: 1000 })
      .bindTooltip(`true spot: ${esc(placeText(t.place))}`).addTo(layer);
    map.fitBounds(L.latLngBounds([[t.lat, t.lon], [you.lat, you.lon], [model.lat, model.lon]]).pad(0.3), { maxZoom: 6, animate: false });

    $("play-truth-place").textContent = `${placeText(t.place)} · ${coordText(t.lat, t.lon)}`;
    $("play-you-km").textContent = kmText(you.km);
    $("play-you-score").textContent = scoreText(you.geoscore);
    $("play-model-km").textContent = kmText(model.km);
    $("play-model-score").textContent = scoreText(model.geoscore);
    const diff = Math.round(you.geoscore) - Math.round(model.geoscore);
    $("play-verdict").textContent = diff > 0 ? `You beat the model by ${fmt(diff, 0)} points` :
      diff < 0 ? `The model wins this round by ${fmt(-diff, 0)} points` : "A tie!";
    $("play-verdict").className = `verdict ${diff > 0 ? "win" : diff < 0 ? "loss" : ""}`;
    $("play-guess").hidden = true;
    $("play-hint").hidden = true;
    $("play-result").hidden = false;
    updateTotals();
    if (game.round >= ROUNDS) {
      $("play-next").hidden = true;
      showSummary();
      setPlayState("over");
    } else {
      $("play-next").hidden = false;
      setPlayState("scored");
    }
  }

  function totals() {
    return game.results.reduce((a, r) => ({ you: a.you + r.you, model: a.model + r.model }), { you: 0, model: 0 });
  }

  function updateTotals() {
    const s = totals();
    $("play-total-you").textContent = scoreText(s.you);
    $("play-total-model").textContent = scoreText(s.model);
  }

  function showSummary() {
    const s = totals();
    $("play-rounds").innerHTML = game.results.map((r, i) =>
      `<tr><td>${i + 1}</td><td>${esc(scoreText(r.you))} <span class="muted">(${esc(kmText(r.youKm))})</span></td>` +
      `<td>${esc(scoreText(r.model))} <span class="muted">(${esc(kmText(r.modelKm))})</span></td></tr>`).join("");
    $("play-final-you").textContent = scoreText(s.you);
    $("play-final-model").textContent = scoreText(s.model);
    const you = Math.round(s.you), model = Math.round(s.model);
    $("play-winner").textContent = you > model ? `You win, ${fmt(you, 0)} to ${fmt(model, 0)}!` :
      you < model ? `The model wins, ${fmt(model, 0)} to ${fmt(you, 0)}.` : `A draw at ${fmt(you, 0)} each.`;
    $("play-winner").className = `winner ${you > model ? "win" : you < model ? "loss" : ""}`;
    $("play-summary").hidden = false;
  }

  $("play-next").addEventListener("click", () => { if (game.round < ROUNDS) nextRound(); });
  $("play-new").addEventListener("click", newGame);
})();
