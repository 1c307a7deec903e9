"""`geosolver demo`: the whole pipeline on the offline terrain world, in a few minutes on a CPU.

Steps (each is the public API the CLI sub-commands use, nothing demo-specific):

1. build a terrain world (:mod:`geosolver.terrain`) — real geography, offline;
2. embed gallery and queries with each encoder (default: ImageNet-pretrained EfficientNet-Lite0 at the tiles' native 64 px
   and the colour-histogram baseline) into stores (:mod:`geosolver.embed`);
3. evaluate every aggregation strategy against the full gallery (:mod:`geosolver.evaluate`);
4. curate a gallery a quarter of the size, ``grouped-clustered`` vs ``random``, and evaluate both;
5. analyse the embedding spaces side by side (:mod:`geosolver.analysis`);
6. write ``report.html`` (self-contained) and ``report.md`` with all tables and plots.

Re-running with the same ``--out`` reuses what is already there (the world, finished stores).
Scores on the terrain world are **not comparable** with street-view benchmarks such as OSV5M.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from geosolver.analysis import analyze_stores
from geosolver.curate import curate_store
from geosolver.data import read_dataset
from geosolver.embed import embed
from geosolver.encoders import load_encoder
from geosolver.evaluate import compare_runs, evaluate
from geosolver.files import atomic_write_text
from geosolver.htmlreport import img_tag, markdown_table_html, page
from geosolver.rundir import RunDir
from geosolver.terrain import build_world

log = logging.getLogger(__name__)

from geosolver.names import DEMO_MODELS as DEFAULT_MODELS  # noqa: E402  (import-free: `demo --help` reads it)
CAVEAT = (
    "Scores on the terrain world (map tiles rendered from MODIS land cover and Köppen–Geiger climate "
    "around GeoNames places) are not comparable with street-view benchmarks such as OSV5M; compare "
    "methods with each other on worlds built with the same settings."
)


#: short HTML headers for the evaluation tables, so that every column fits a 1400 px window
#: (the markdown keeps the full names; the full name is the header's hover text)
HTML_HEADERS = {
    "gallery_rows": "gallery", "geoscore": "Geoscore", "geoscore_ci95": "95 % CI",
    "median_km": "median km", "mean_km": "mean km", "acc@1km %": "≤1 km", "acc@25km %": "≤25 km",
    "acc@200km %": "≤200 km", "acc@750km %": "≤750 km", "acc@2500km %": "≤2500 km", "country_acc %": "country",
}


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _model_slug(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


def _world(out: Path, n_gallery: int, n_queries: int, split: str, seed: int, progress: bool) -> Path:
    wdir = out / "world"
    info_f = wdir / "world.json"
    want = {"n_gallery": n_gallery, "n_queries": n_queries, "split": split, "seed": seed}
    if info_f.exists():
        info = json.loads(info_f.read_text())
        have = {k: info.get("settings", info).get(k) for k in want}
        if have == want:
            _say(f"world: reusing {wdir}")
            return wdir
    _say(f"world: building {n_gallery} gallery + {n_queries} query tiles ({split} split)")
    build_world(wdir, n_gallery, n_queries, split=split, seed=seed, progress=progress, overwrite=True)
    return wdir


def _embed(world: Path, which: str, model: str, enc, out: Path, progress: bool):
    table = read_dataset("folder", world, csv=world / f"{which}.csv")
    store = out / "stores" / _model_slug(model) / which
    res = embed(table, enc, store, batch_size=64, num_workers=1, progress=progress,
                config={"command": "demo", "dataset": str(world / f"{which}.csv"), "model": model})
    _say(f"embed {model} {which}: {len(res.store)} rows ({res.rows_embedded} new, {res.images_per_s:.0f} img/s)")
    return res.store


def run_demo(
    out: str | os.PathLike = "demo",
    n_gallery: int = 4000,
    n_queries: int = 400,
    models: Sequence[str] = DEFAULT_MODELS,
    split: str = "random",
    curated_fraction: float = 0.25,
    analysis_sample: int = 3000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the whole demo and write ``OUT/report.html``; returns the summary written to ``OUT/summary.json``."""
    t_start = time.time()
    run = RunDir(out, "demo")
    out = run.path
    timings: dict[str, float] = {}
    config = {
        "out": str(out), "n_gallery": n_gallery, "n_queries": n_queries, "models": list(models),
        "split": split, "curated_fraction": curated_fraction, "analysis_sample": analysis_sample, "seed": seed,
    }
    run.write_config(config)

    t = time.time()
    world = _world(out, n_gallery, n_queries, split, seed, progress)
    timings["world"] = time.time() - t

    stores: dict[str, dict] = {}
    t = time.time()
    for m in models:
        enc = load_encoder(m, device="cpu")
        stores[m] = {w: _embed(world, w, m, enc, out, progress) for w in ("gallery", "queries")}
    timings["embed"] = time.time() - t

    runs: dict[str, Path] = {}
    results: dict[str, dict] = {}
    t = time.time()
    for m in models:
        rd = out / "runs" / f"{_model_slug(m)}-full"
        results[rd.name] = evaluate(stores[m]["queries"], stores[m]["gallery"], ks=[1, 10, 50], out=rd, progress=False, seed=seed)
        runs[rd.name] = rd
        b = results[rd.name]["best"]
        _say(f"evaluate {m}: best {b['strategy']} k={b['k']} Geoscore {b['geoscore']:.0f}, median {b['median_km']:.0f} km")
    timings["evaluate"] = time.time() - t

    # curation: a gallery a quarter of the size, chosen two ways, with the first model's embeddings
    t = time.time()
    m0 = models[0]
    size = max(1, int(round(curated_fraction * len(stores[m0]["gallery"]))))
    curated = {}
    for strategy in ("grouped-clustered", "random"):
        cdir = out / "stores" / _model_slug(m0) / f"gallery-{strategy}-{size}"
        if not (cdir / "manifest.json").exists():
            curate_store(stores[m0]["gallery"].path, cdir, size, by=["cell", "land_cover", "climate"], strategy=strategy, seed=seed)
        curated[strategy] = cdir
        rd = out / "runs" / f"{_model_slug(m0)}-{strategy}-{size}"
        results[rd.name] = evaluate(stores[m0]["queries"], cdir, ks=[1, 10, 50], out=rd, progress=False, seed=seed)
        runs[rd.name] = rd
        b = results[rd.name]["best"]
        _say(f"curated {strategy} ({size}): best Geoscore {b['geoscore']:.0f}")
    timings["curate"] = time.time() - t

    t = time.time()
    analysis = analyze_stores(
        [stores[m]["gallery"].path for m in models], out / "analysis", sample=min(analysis_sample, n_gallery),
        seed=seed, names=list(models), progress=progress,
    )
    timings["analysis"] = time.time() - t

    _, compare_md = compare_runs(list(runs.values()))
    _, compare_all_md = compare_runs([runs[f"{_model_slug(m)}-full"] for m in models], all_rows=True)
    timings["total"] = time.time() - t_start
    summary = {
        "world": str(world),
        "runs": {k: {"best": v["best"], "references": v["references"]} for k, v in results.items()},
        "analysis": {name: {k: v for k, v in enc.items() if isinstance(v, (int, float, str))} for name, enc in analysis.get("encoders", {}).items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "caveat": CAVEAT,
    }
    run.write_json("summary.json", summary)
    _write_report(out, world, models, runs, curated, compare_md, compare_all_md, timings, config)
    _say(f"done in {timings['total']:.0f}s: open {out / 'report.html'}")
    return summary


def _tile_mosaic(world: Path, path: Path, n: int = 24, seed: int = 0) -> None:
    import matplotlib  # matplotlib: heavy, loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn

    df = pd.read_csv(world / "queries.csv")
    df = df.sample(n=min(n, len(df)), random_state=seed)
    cols = 8
    rows = int(np.ceil(len(df) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (_, r) in zip(np.atleast_1d(axes).ravel(), df.iterrows()):
        ax.imshow(Image.open(world / r["path"]))
        ax.set_title(f"{r['country']} {r['lat']:.1f},{r['lon']:.1f}\n{str(r['land_cover'])[:16]}", fontsize=6.5)
    fig.suptitle("Query tiles (country, lat, lon, land cover at the point)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_report(out: Path, world: Path, models, runs: dict[str, Path], curated: dict[str, Path], compare_md: str,
                  compare_all_md: str, timings: dict, config: dict) -> None:
    _tile_mosaic(world, out / "tiles.png")
    first = runs[f"{_model_slug(models[0])}-full"]
    wjson = json.loads((world / "world.json").read_text())
    counts = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in wjson.get("counts", {}).items())
    parts_md = [
        "# Geosolver demo report", "", f"> {CAVEAT}", "",
        f"World: {counts}; split `{config['split']}`, seed {config['seed']}; encoders: {', '.join(models)}.", "",
        "## Best row of every run (with random and oracle references)", "", compare_md, "",
        "## All strategies, full gallery", "", compare_all_md, "",
        "## Plots", "", "![tiles](tiles.png)", "",
        f"![error map]({first.relative_to(out)}/errors_map.png)", f"![error distribution]({first.relative_to(out)}/errors_hist.png)", "",
        *[f"![curation {s}]({p.relative_to(out)}/map.png)" for s, p in curated.items()], "",
        "Embedding-space analysis: [analysis/report.html](analysis/report.html)", "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
    ]
    atomic_write_text(out / "report.md", "\n".join(parts_md))

    analysis_imgs = sorted((out / "analysis").glob("*.png"))
    body = [
        "<h1>Geosolver demo report</h1>",
        f"<div class='note'>{CAVEAT}</div>",
        f"<p>World: {counts}; split <code>{config['split']}</code>, seed {config['seed']}. "
        f"Encoders: {', '.join(models)}. Reproduce: <code>geosolver demo --out {out}</code>.</p>",
        "<h2>Results: best row of every run</h2>",
        "<p><b>random</b> guesses a random gallery image's location; <b>oracle</b> is the gallery coordinate nearest the "
        "truth (the best any retrieval from this gallery can do). Geoscore = 5000·exp(−km/1492.7), with a 95 % bootstrap interval.</p>",
        "<p>Columns: mean Geoscore and its 95 % interval; median and mean error; then accuracies in %: the share of queries "
        "located within 1, 25, 200, 750 and 2500 km (≤1 km … ≤2500 km) and in the right country. A reference row has no k.</p>",
        markdown_table_html(compare_md, HTML_HEADERS),
        "<h2>All strategies against the full gallery</h2>",
        markdown_table_html(compare_all_md, HTML_HEADERS),
        "<h2>What the photos look like</h2>", img_tag(out / "tiles.png", "tiles"),
        f"<h2>Errors of {models[0]} (best strategy)</h2>",
        "<div class='grid'>", img_tag(first / "errors_map.png", "error map"), img_tag(first / "errors_hist.png", "error distribution"), "</div>",
        "<h2>Curated galleries</h2>",
        "<p>Same size, chosen two ways from the first encoder's gallery; evaluated on the same queries (table above).</p>",
        "<div class='grid'>", *[img_tag(p / "map.png", f"curation {s}") for s, p in curated.items()], "</div>",
        "<h2>Embedding space: similarity vs distance, collapse diagnostics</h2>",
        "<p>Full report with the comparison table: <a href='analysis/report.html'>analysis/report.html</a>.</p>",
        *[img_tag(p, p.stem) for p in analysis_imgs],
        "<h2>Timings</h2>", "<p>" + ", ".join(f"{k}: {v:.0f} s" for k, v in timings.items()) + "</p>",
    ]
    atomic_write_text(out / "report.html", page("Geosolver demo report", "\n".join(body)))
