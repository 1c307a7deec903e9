"""`geosolver study`: the founding study on OSV5M, every step through the public library API.

Steps (each skipped when its output already exists, so a killed study resumes where it stopped):

0. models: the two encoders' snapshots (:func:`geosolver.hub.ensure_model`; cached → no request);
1. embed the test split and a train slice with both encoders (:func:`geosolver.embed.embed`);
2. analysis of both encoders side by side (:func:`geosolver.analysis.analyze_stores`);
3. the group-size table of the test split over (cell, land_cover, climate, soil)
   (:func:`geosolver.enrich.enrich_store` + :func:`geosolver.curate.group_table`);
4. kNN evaluation of test against the train-slice gallery for both encoders (:func:`geosolver.evaluate.evaluate`);
5. curated (``grouped-clustered``) vs ``random`` galleries of ``gallery_sizes`` images, evaluated on
   the same queries (:func:`geosolver.curate.curate_store`);
6. fine-tuning the model on the train slice with distance-consistency and, beside it, geo-contrastive
   (:func:`geosolver.train.train`), re-embedding, evaluation and analysis against the base model;
7. ``report.html`` (self-contained), ``report.md``, ``summary.json``: every table and plot, the command
   lines reproducing each step, timings and the hardware.

Before starting, :func:`estimate` prints the time and disk the requested sizes need — estimates from
assumed per-image rates, stated with it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from geosolver.encoders import DEFAULT_ENCODER
from geosolver.files import atomic_write_text
from geosolver.htmlreport import img_tag, markdown_table_html, page
from geosolver.rundir import RunDir

log = logging.getLogger(__name__)

GROUP_BY = ("cell", "land_cover", "climate", "soil")
OBJECTIVES = ("distance-consistency", "geo-contrastive")
STRATEGIES = ("grouped-clustered", "random")
#: Published size of the OSV5M test split (used by the estimate when --test-limit is not given).
OSV5M_TEST_ROWS = 210_122

#: Assumed rates for a ViT-L/14-336 encoder (StreetCLIP's size) — the estimate's basis, not measurements.
RATES = {
    "cuda": {"embed_img_s": 400.0, "train_img_s": 120.0},
    "cpu": {"embed_img_s": 3.0, "train_img_s": 1.0},
}
STORE_BYTES_PER_IMAGE = 768 * 2 + 600  # float16 768-d row + its metadata row (parquet), about
MODEL_BYTES = 1.71e9  # a ViT-L/14-336 CLIP checkpoint (safetensors, fp32)


@dataclass
class StudyConfig:
    root: str
    out: str
    model: str = DEFAULT_ENCODER
    baseline: str = "clip-vit-l-14-336"
    test_limit: int | None = None
    train_limit: int = 100_000
    gallery_sizes: list[int] = field(default_factory=lambda: [10_000, 50_000])
    steps: int = 500
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    train_batch_size: int = 64
    num_workers: int | None = None
    analysis_sample: int = 3000
    seed: int = 0
    progress: bool = True


def _say(msg: str) -> None:
    print(f"[study] {msg}", flush=True)


def _slug(name: str) -> str:
    return name.replace("/", "_").replace(":", "_").strip("_.") or "model"


def hardware() -> dict:
    import torch

    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["device_name"] = platform.processor() or platform.machine() or "cpu"
    return info


def _device_kind(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def estimate(cfg: StudyConfig) -> dict:
    """Time and disk the study needs for the requested sizes, from :data:`RATES` (assumed, per image)."""
    kind = _device_kind(cfg.device)
    rates = RATES[kind]
    n_test = cfg.test_limit or OSV5M_TEST_ROWS
    n_train = cfg.train_limit
    embedded = (2 + len(OBJECTIVES)) * (n_test + n_train)  # 2 encoders + one re-embedding per fine-tuned model
    trained = len(OBJECTIVES) * cfg.steps * cfg.train_batch_size
    seconds = embedded / rates["embed_img_s"] + trained / rates["train_img_s"]
    stores = embedded + 2 * sum(min(s, n_train) for s in cfg.gallery_sizes)
    disk = stores * STORE_BYTES_PER_IMAGE + (2 + len(OBJECTIVES)) * MODEL_BYTES
    return {"device": kind, "assumed_rates": rates, "images_embedded": embedded, "images_trained": trained,
            "seconds": seconds, "disk_bytes": disk, "n_test": n_test, "n_train": n_train}


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


class _Steps:
    """Runs named steps, skipping those whose output exists; keeps timings, status and commands."""

    def __init__(self):
        self.status: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.commands: dict[str, list[str]] = {}

    def run(self, name: str, done: Callable[[], bool], fn: Callable[[], object], commands: Sequence[str] = ()):
        self.commands.setdefault(name, []).extend(commands)
        if done():
            self.status[name] = "skipped"
            _say(f"{name}: done already, skipped")
            return None
        t = time.time()
        res = fn()
        self.timings[name] = time.time() - t
        self.status[name] = "ran"
        _say(f"{name}: {self.timings[name]:.1f}s")
        return res


def _store_done(path: Path, limit: int | None) -> bool:
    if not (path / "manifest.json").is_file():
        return False
    from geosolver.store import EmbeddingStore

    st = EmbeddingStore(path)
    return st.complete and st.manifest.get("config", {}).get("limit", "unset") == limit


def run_study(cfg: StudyConfig) -> dict:
    """Run (or resume) the study; writes ``OUT/report.html`` and returns ``summary.json``'s content."""
    from geosolver.hub import ensure_model

    t_start = time.time()
    run = RunDir(cfg.out, "study")
    out = run.path
    root = Path(os.path.abspath(cfg.root))
    hw = hardware()
    est = estimate(cfg)
    _say(f"estimate ({est['device']}, ASSUMED rates per image for ViT-L/14-336-sized encoders: embedding "
         f"{est['assumed_rates']['embed_img_s']:g} img/s, training {est['assumed_rates']['train_img_s']:g} img/s): "
         f"{est['images_embedded']:,} images embedded + {est['images_trained']:,} trained ≈ {_fmt_s(est['seconds'])}, "
         f"disk ≈ {est['disk_bytes'] / 1e9:.1f} GB (stores + model snapshots + fine-tuned models; the dataset not "
         f"included). These are estimates; the report records the real timings.")
    _say(f"hardware: {hw['device_name']}, {hw['cpu_count']} CPUs")
    run.write_config({**asdict(cfg), "root": str(root), "estimate": est, "hardware": hw})
    steps = _Steps()
    common = ["--device", cfg.device, "--precision", cfg.precision]

    # 0. models -------------------------------------------------------------------------------
    names = {"model": cfg.model, "baseline": cfg.baseline}
    paths: dict[str, str] = {}
    models_file = out / "models.json"
    prev = json.loads(models_file.read_text()) if models_file.is_file() else {}

    def models_done() -> bool:
        ok = prev.get("names") == names and all(Path(p).exists() or "/" not in p for p in prev.get("paths", {}).values())
        if ok:
            paths.update(prev["paths"])
        return ok

    def fetch_models():
        for k, n in names.items():
            paths[k] = ensure_model(n, progress=cfg.progress)
        run.write_json("models.json", {"names": names, "paths": paths})

    steps.run("0 models", models_done, fetch_models, [f"geosolver download model {shlex.quote(n)}" for n in names.values()])

    # 1. embed --------------------------------------------------------------------------------
    tables: dict[str, object] = {}
    limits = {"test": cfg.test_limit, "train": cfg.train_limit}

    def table(split: str):
        if split not in tables:
            from geosolver.data import read_dataset

            tables[split] = read_dataset("osv5m", root, split=split, limit=limits[split])
        return tables[split]

    def store_path(label: str, split: str) -> Path:
        return out / "stores" / label / split

    def embed_all(label: str, model_path: str, title: str) -> None:
        from geosolver.embed import embed
        from geosolver.encoders import EncoderSpec, load_encoder

        todo = [s for s in ("test", "train") if not _store_done(store_path(label, s), limits[s])]
        if not todo:
            return
        enc = load_encoder(EncoderSpec(model_path, cfg.device, cfg.precision))
        for s in todo:
            t = table(s)
            res = embed(t, enc, store_path(label, s), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        progress=cfg.progress, skipped=t.attrs.get("skipped"),
                        config={"command": "study", "dataset": str(root), "split": s, "limit": limits[s], "model": title})
            _say(f"embed {title} {s}: {len(res.store):,} rows ({res.rows_embedded:,} new, {res.images_per_s:.1f} img/s)")

    def embed_cmds(model: str, label: str) -> list[str]:
        return [shlex.join(["geosolver", "embed", "--dataset", "osv5m", "--root", str(root), "--split", s,
                            *(["--limit", str(limits[s])] if limits[s] else []), "--model", model,
                            "--out", str(store_path(label, s)), *common]) for s in ("test", "train")]

    labels = {k: _slug(n) for k, n in names.items()}
    if labels["model"] == labels["baseline"]:
        labels["baseline"] += "-baseline"
    for k in ("model", "baseline"):
        steps.run(f"1 embed {names[k]}",
                  lambda k=k: all(_store_done(store_path(labels[k], s), limits[s]) for s in ("test", "train")),
                  lambda k=k: embed_all(labels[k], paths[k], names[k]), embed_cmds(paths[k], labels[k]))

    # 2. analysis -----------------------------------------------------------------------------
    from geosolver.analysis import analyze_stores

    n_test_rows = _rows(store_path(labels["model"], "test"))
    sample = max(2, min(cfg.analysis_sample, n_test_rows))
    an_stores = [store_path(labels[k], "test") for k in ("model", "baseline")]
    steps.run("2 analysis", lambda: (out / "analysis" / "stats.json").is_file(),
              lambda: analyze_stores(an_stores, out / "analysis", sample=sample, seed=cfg.seed,
                                     names=[names["model"], names["baseline"]], progress=cfg.progress),
              [shlex.join(["geosolver", "analyze", *map(str, an_stores), "--out", str(out / "analysis"), "--sample",
                           str(sample), "--names", f"{names['model']},{names['baseline']}"])])

    # 3. groups -------------------------------------------------------------------------------
    def groups():
        from geosolver.curate import format_histogram, group_size_histogram, group_table
        from geosolver.enrich import enrich_store
        from geosolver.store import EmbeddingStore

        for s in ("test", "train"):
            enrich_store(store_path(labels["model"], s), progress=cfg.progress)
        st = EmbeddingStore(store_path(labels["model"], "test"))
        gt = group_table(st.metadata, list(GROUP_BY))
        hist = group_size_histogram(gt["n_images"].to_numpy())
        feats = [c for c in gt.columns if c != "n_images"]
        run.write_json("groups.json", {"by": feats, "n_images": len(st), "n_groups": len(gt),
                                       "histogram": hist.to_dict(orient="records"),
                                       "largest": gt.head(10).astype(str).to_dict(orient="records")})
        run.write_text("groups.txt", f"{len(st):,} images in {len(gt):,} groups by {','.join(feats)}\n{format_histogram(hist)}\n")

    test_store = store_path(labels["model"], "test")
    steps.run("3 groups", lambda: (out / "groups.json").is_file(), groups,
              [f"geosolver enrich {shlex.quote(str(store_path(labels['model'], s)))}" for s in ("test", "train")]
              + [f"geosolver curate stats {shlex.quote(str(test_store))} --by {','.join(GROUP_BY)}"])

    # 4. evaluation ---------------------------------------------------------------------------
    from geosolver.evaluate import evaluate

    runs: dict[str, Path] = {}

    def evaluate_step(name: str, queries: Path, gallery: Path, title: str) -> None:
        rd = out / "runs" / name
        runs[name] = rd
        steps.run(title, lambda: (rd / "metrics.json").is_file(),
                  lambda: evaluate(queries, gallery, out=rd, progress=False, seed=cfg.seed),
                  [shlex.join(["geosolver", "evaluate", "--queries", str(queries), "--gallery", str(gallery), "--out", str(rd)])])

    for k in ("model", "baseline"):
        evaluate_step(f"{labels[k]}-full", store_path(labels[k], "test"), store_path(labels[k], "train"),
                      f"4 evaluate {names[k]}")

    # 5. curation -----------------------------------------------------------------------------
    from geosolver.curate import curate_store

    n_gallery = _rows(store_path(labels["model"], "train"))
    sizes = [s for s in cfg.gallery_sizes if s < n_gallery]
    for s in cfg.gallery_sizes:
        if s >= n_gallery:
            _say(f"gallery size {s:,} >= the {n_gallery:,}-image train slice: skipped (no selection to make)")
    curated: dict[str, Path] = {}
    for size in sizes:
        for strategy in STRATEGIES:
            cdir = out / "stores" / labels["model"] / f"gallery-{strategy}-{size}"
            curated[f"{strategy}-{size}"] = cdir
            gal = store_path(labels["model"], "train")
            steps.run(f"5 curate {strategy} {size}", lambda cdir=cdir: (cdir / "manifest.json").is_file(),
                      lambda cdir=cdir, strategy=strategy, size=size: curate_store(gal, cdir, size, by=list(GROUP_BY),
                                                                                    strategy=strategy, seed=cfg.seed),
                      [shlex.join(["geosolver", "curate", "select", str(gal), "--size", str(size), "--strategy", strategy,
                                   "--by", ",".join(GROUP_BY), "--seed", str(cfg.seed), "--out", str(cdir)])])
            evaluate_step(f"{labels['model']}-{strategy}-{size}", test_store, cdir, f"5 evaluate {strategy} {size}")

    # 6. fine-tuning --------------------------------------------------------------------------
    from geosolver.train import TrainConfig, train

    n_train_rows = n_gallery
    tb = max(4, min(cfg.train_batch_size, n_train_rows // 2) // 4 * 4)
    tprec = cfg.precision if cfg.precision in ("fp32", "bf16") else "auto"
    ft_labels: list[str] = []
    for obj in OBJECTIVES:
        tdir = out / "train" / obj
        label = f"ft-{obj}"
        ft_labels.append(label)
        tcfg = TrainConfig(out=str(tdir), root=str(root), dataset="osv5m", split="train", limit=cfg.train_limit,
                           model=paths["model"], objective=obj, steps=cfg.steps, batch_size=tb,
                           eval_every=max(cfg.steps // 5, 1), device=cfg.device, precision=tprec, seed=cfg.seed,
                           num_workers=cfg.num_workers, cache_images=n_train_rows <= 2000, progress=cfg.progress)

        def do_train(tcfg=tcfg, tdir=tdir):
            res = train(tcfg)
            RunDir(tdir, "train").write_json("train_result.json", {
                "steps": res.steps, "best_step": res.best_step, "seconds": res.seconds,
                "initial_metrics": res.initial_metrics, "best_metrics": res.best_metrics, "final_metrics": res.final_metrics})

        steps.run(f"6 train {obj}", lambda tdir=tdir: (tdir / "train_result.json").is_file() and (tdir / "model").is_dir(),
                  do_train,
                  [shlex.join(["geosolver", "train", "--data", str(root), "--dataset", "osv5m", "--split", "train",
                               "--limit", str(cfg.train_limit), "--model", paths["model"], "--objective", obj,
                               "--steps", str(cfg.steps), "--batch-size", str(tb), "--eval-every", str(tcfg.eval_every),
                               "--device", cfg.device, "--precision", tprec, "--out", str(tdir)])])
        mdir = str(tdir / "model")
        steps.run(f"6 embed {label}",
                  lambda label=label: all(_store_done(store_path(label, s), limits[s]) for s in ("test", "train")),
                  lambda label=label, mdir=mdir: embed_all(label, mdir, label), embed_cmds(mdir, label))
        evaluate_step(f"{label}-full", store_path(label, "test"), store_path(label, "train"), f"6 evaluate {label}")

    ft_stores = [store_path(labels["model"], "test")] + [store_path(lb, "test") for lb in ft_labels]
    ft_names = [f"{names['model']} (base)"] + ft_labels
    steps.run("6 analysis fine-tuned", lambda: (out / "analysis-finetune" / "stats.json").is_file(),
              lambda: analyze_stores(ft_stores, out / "analysis-finetune", sample=sample, seed=cfg.seed,
                                     names=ft_names, progress=cfg.progress),
              [shlex.join(["geosolver", "analyze", *map(str, ft_stores), "--out", str(out / "analysis-finetune"),
                           "--sample", str(sample), "--names", ",".join(ft_names)])])

    # 7. report -------------------------------------------------------------------------------
    summary = _write_report(out, cfg, names, labels, runs, curated, steps, hw, est, time.time() - t_start)
    _say(f"done in {time.time() - t_start:.0f}s: open {out / 'report.html'}")
    return summary


def _rows(store: Path) -> int:
    from geosolver.store import EmbeddingStore

    return len(EmbeddingStore(store))


def _analysis_md(path: Path) -> str:
    from geosolver.analysis.report import table_rows

    res = json.loads((path / "stats.json").read_text())
    header, rows = table_rows(res)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _groups_md(out: Path) -> str:
    g = json.loads((out / "groups.json").read_text())
    lines = [f"{g['n_images']:,} test images in {g['n_groups']:,} groups by {', '.join(g['by'])}.", "",
             "| images/group | groups | % groups | images | % images |", "|---|---|---|---|---|"]
    for r in g["histogram"]:
        lines.append(f"| {r['bin']} | {r['n_groups']:,} | {r['pct_groups']:.1f} | {r['n_images']:,} | {r['pct_images']:.1f} |")
    return "\n".join(lines)


def _write_report(out: Path, cfg: StudyConfig, names, labels, runs: dict[str, Path], curated, steps: _Steps,
                  hw: dict, est: dict, total_s: float) -> dict:
    from geosolver.evaluate import compare_runs

    full = [runs[f"{labels[k]}-full"] for k in ("model", "baseline")]
    cur = [runs[n] for n in runs if any(n.endswith(f"-{c}") for c in curated)]
    ft = [runs[f"{labels['model']}-full"]] + [runs[n] for n in runs if n.startswith("ft-")]
    _, md_encoders = compare_runs(full)
    _, md_encoders_all = compare_runs(full, all_rows=True)
    _, md_curation = compare_runs([runs[f"{labels['model']}-full"], *cur]) if cur else (None, "(no gallery size below the train slice)")
    _, md_ft = compare_runs(ft)
    md_an = _analysis_md(out / "analysis")
    md_an_ft = _analysis_md(out / "analysis-finetune")
    md_groups = _groups_md(out)
    metrics = {n: json.loads((rd / "metrics.json").read_text()) for n, rd in runs.items()}
    trains = {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "train").glob("*/train_result.json"))}
    summary = {
        "config": asdict(cfg), "models": names,
        "runs": {n: {"best": m.get("best"), "references": m.get("references")} for n, m in metrics.items()},
        "training": trains,
        "groups": json.loads((out / "groups.json").read_text()),
        "steps": steps.status, "timings_s": {k: round(v, 2) for k, v in steps.timings.items()},
        "total_s": round(total_s, 2), "hardware": hw, "estimate": est, "commands": steps.commands,
    }
    RunDir(out, "study").write_json("summary.json", summary)

    timing_md = "\n".join(["| step | status | seconds |", "|---|---|---|"] + [
        f"| {k} | {v} | {steps.timings.get(k, 0):.1f} |" for k, v in steps.status.items()])
    cmds_md = "\n".join(f"# {step}\n" + "\n".join(c) for step, c in steps.commands.items() if c)
    hw_line = (f"{hw['device_name']} ({'CUDA' if hw['cuda'] else 'CPU only'}), {hw['cpu_count']} CPUs, torch {hw['torch']}, "
               f"{hw['platform']}")
    est_line = (f"Estimate printed before starting (assumed {est['assumed_rates']['embed_img_s']:g} img/s embedding, "
                f"{est['assumed_rates']['train_img_s']:g} img/s training on {est['device']}): {_fmt_s(est['seconds'])}, "
                f"{est['disk_bytes'] / 1e9:.1f} GB. Actual: {_fmt_s(total_s)} this run.")
    train_md = "\n".join(["| objective | steps | kept step | seconds | base Geoscore (val) | kept Geoscore (val) |", "|---|---|---|---|---|---|"] + [
        f"| {k} | {v['steps']} | {v['best_step']} | {v['seconds']:.0f} | {v['initial_metrics'].get('geoscore', float('nan')):.0f} | "
        f"{v['best_metrics'].get('geoscore', float('nan')):.0f} |" for k, v in trains.items()])
    first = full[0]
    parts_md = [
        "# Geosolver founding study (OSV5M)", "",
        f"Encoders: {names['model']} vs {names['baseline']}; test queries {cfg.test_limit or 'all'}, train slice "
        f"{cfg.train_limit:,} (the gallery). Dataset root `{cfg.root}`.", "",
        "## 1. Encoders: best row of each (with random and oracle references)", "", md_encoders, "",
        "## All strategies", "", md_encoders_all, "",
        "## 2. Embedding space (similarity vs distance)", "", md_an, "",
        "## 3. Group sizes of the test split", "", md_groups, "",
        "## 5. Curated vs random galleries", "", md_curation, "",
        "## 6. Fine-tuning", "", train_md, "", md_ft, "", md_an_ft, "",
        "## Plots", "", f"![error map]({first.relative_to(out)}/errors_map.png)", "",
        *[f"![curation {k}]({p.relative_to(out)}/map.png)" for k, p in curated.items() if (p / "map.png").exists()], "",
        "## Timings", "", timing_md, "", est_line, "",
        "## Hardware", "", hw_line, "",
        "## Commands reproducing each step", "", "```", cmds_md, "```", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(parts_md))

    imgs = lambda d: [img_tag(p, p.stem) for p in sorted(d.glob("*.png"))]  # noqa: E731
    body = [
        "<h1>Geosolver founding study (OSV5M)</h1>",
        f"<p>Encoders: <b>{names['model']}</b> vs <b>{names['baseline']}</b>; test queries {cfg.test_limit or 'all'}, "
        f"train slice (gallery) {cfg.train_limit:,}. Geoscore = 5000·exp(−km/1492.7), 95 % bootstrap interval; "
        "<b>random</b> guesses a random gallery location, <b>oracle</b> is the gallery coordinate nearest the truth.</p>",
        "<h2>1. Encoders against the full gallery</h2>", markdown_table_html(md_encoders),
        "<h3>All strategies</h3>", markdown_table_html(md_encoders_all),
        "<div class='grid'>", img_tag(first / "errors_map.png", "error map"), img_tag(first / "errors_hist.png", "error distribution"), "</div>",
        "<h2>2. Embedding space: similarity vs distance</h2>", markdown_table_html(md_an), *imgs(out / "analysis"),
        "<h2>3. Group sizes of the test split</h2>", markdown_table_html(md_groups),
        f"<p>{md_groups.splitlines()[0]}</p>",
        "<h2>5. Curated (grouped-clustered) vs random galleries</h2>",
        "<p>Same size, chosen two ways from the model's train-slice gallery; the same test queries.</p>",
        markdown_table_html(md_curation) if cur else f"<p>{md_curation}</p>",
        "<div class='grid'>", *[img_tag(p / "map.png", k) for k, p in curated.items() if (p / "map.png").exists()], "</div>",
        "<h2>6. Fine-tuning: distance-consistency and geo-contrastive vs the base model</h2>",
        markdown_table_html(train_md), markdown_table_html(md_ft), markdown_table_html(md_an_ft),
        *imgs(out / "analysis-finetune"),
        *[img_tag(p, f"training {p.parent.name}") for p in sorted((out / "train").glob("*/training.png"))],
        "<h2>Timings</h2>", markdown_table_html(timing_md), f"<p>{est_line}</p>",
        "<h2>Hardware</h2>", f"<p>{hw_line}</p>",
        "<h2>Commands reproducing each step</h2>",
        "<pre>" + cmds_md.replace("&", "&amp;").replace("<", "&lt;") + "</pre>",
    ]
    atomic_write_text(out / "report.html", page("Geosolver founding study", "\n".join(body)))
    return summary
