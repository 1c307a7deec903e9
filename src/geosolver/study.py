"""`geosolver study`: the founding study on OSV5M, every step through the public library API.

Steps (each skipped when its output already exists, so a killed study resumes where it stopped):

0. models: the two encoders' snapshots (:func:`geosolver.hub.ensure_model`; cached → no request);
1. embed the test split and a train slice with both encoders (:func:`geosolver.embed.embed`);
2. analysis of both encoders side by side (:func:`geosolver.analysis.analyze_stores`);
3. the group-size table of the test split over (cell, land_cover, climate, soil)
   (:func:`geosolver.enrich.enrich_store` + :func:`geosolver.curate.group_table`);
4. kNN evaluation of test against the train-slice gallery for both encoders (:func:`geosolver.evaluate.evaluate`);
   for the model, when it has a text tower (StreetCLIP does), one more run: kNN vs zero-shot
   (countries) vs kNN with the text prior at k = 10 (run ``{label}-text``);
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

import html
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
from geosolver.store import EmbeddingStore

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



# ----------------------------------------------------------------------------------------------
# the study: a list of stages sharing one state
# ----------------------------------------------------------------------------------------------
_ROLES = ("model", "baseline")
_SPLITS = ("test", "train")


def run_study(cfg: StudyConfig) -> dict:
    """Run (or resume) the study; writes ``OUT/report.html`` and returns ``summary.json``'s content."""
    st = _start(cfg)
    _models(st)
    _embed(st)
    _analyse(st)
    _groups(st)
    _evaluate(st)
    _curate(st)
    _finetune(st)
    return _report(st)


@dataclass
class _Study:
    """What the stages share: the settings, where things go, and what earlier stages produced."""

    cfg: StudyConfig
    run: RunDir
    root: Path  # the dataset root, absolute
    names: dict[str, str]  # role (model, baseline) → the encoder as given
    labels: dict[str, str]  # role → its folder under stores/, also its runs' prefix
    hw: dict
    est: dict
    t_start: float
    steps: _Steps = field(default_factory=_Steps)
    paths: dict[str, str] = field(default_factory=dict)  # role → what load_encoder gets (stage 0)
    tables: dict[str, object] = field(default_factory=dict)  # split → its dataset table, read once
    runs: dict[str, Path] = field(default_factory=dict)  # evaluation → its run directory
    curated: dict[str, Path] = field(default_factory=dict)  # "strategy-size" → the curated gallery store

    @property
    def out(self) -> Path:
        return self.run.path

    @property
    def limits(self) -> dict[str, int | None]:
        return {"test": self.cfg.test_limit, "train": self.cfg.train_limit}

    def store(self, label: str, split: str) -> Path:
        return self.out / "stores" / label / split

    def stores_done(self, label: str) -> bool:
        return all(_store_done(self.store(label, s), self.limits[s]) for s in _SPLITS)

    def table(self, split: str):
        if split not in self.tables:
            from geosolver.data import read_dataset

            self.tables[split] = read_dataset("osv5m", self.root, split=split, limit=self.limits[split])
        return self.tables[split]


def _start(cfg: StudyConfig) -> _Study:
    """Print the estimate and the hardware, write ``config.json``, name the two encoders' stores."""
    t_start = time.time()
    run = RunDir(cfg.out, "study")
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
    names = {"model": cfg.model, "baseline": cfg.baseline}
    labels = {k: _slug(n) for k, n in names.items()}
    if labels["model"] == labels["baseline"]:
        labels["baseline"] += "-baseline"
    return _Study(cfg, run, root, names, labels, hw, est, t_start)


# 0. models ------------------------------------------------------------------------------------
def _models(st: _Study) -> None:
    """The encoders' snapshots (cached → no request); ``models.json`` remembers them for a resume."""
    models_file = st.out / "models.json"
    prev = json.loads(models_file.read_text()) if models_file.is_file() else {}
    st.steps.run("0 models", lambda: _models_known(st, prev), lambda: _fetch_models(st),
                 [f"geosolver download model {shlex.quote(n)}" for n in st.names.values()])


def _models_known(st: _Study, prev: dict) -> bool:
    ok = prev.get("names") == st.names and all(Path(p).exists() or "/" not in p for p in prev.get("paths", {}).values())
    if ok:
        st.paths.update(prev["paths"])
    return ok


def _fetch_models(st: _Study) -> None:
    from geosolver.hub import ensure_model

    for k, n in st.names.items():
        st.paths[k] = ensure_model(n, progress=st.cfg.progress)
    st.run.write_json("models.json", {"names": st.names, "paths": st.paths})


# 1. embed -------------------------------------------------------------------------------------
def _embed(st: _Study) -> None:
    """The test split and the train slice, embedded with both encoders."""
    for k in _ROLES:
        _embed_step(st, f"1 embed {st.names[k]}", st.labels[k], st.paths[k], st.names[k])


def _embed_step(st: _Study, step: str, label: str, model: str, title: str) -> None:
    """``model``'s test and train stores under ``stores/<label>/`` (also stage 6's, for each fine-tuned model)."""
    cfg, limits = st.cfg, st.limits
    cmds = [shlex.join(["geosolver", "embed", "--dataset", "osv5m", "--root", str(st.root), "--split", s,
                        *(["--limit", str(limits[s])] if limits[s] else []), "--model", model,
                        "--out", str(st.store(label, s)), "--device", cfg.device, "--precision", cfg.precision])
            for s in _SPLITS]
    st.steps.run(step, lambda: st.stores_done(label), lambda: _embed_splits(st, label, model, title), cmds)


def _embed_splits(st: _Study, label: str, model: str, title: str) -> None:
    from geosolver.embed import embed
    from geosolver.encoders import EncoderSpec, load_encoder

    cfg, limits = st.cfg, st.limits
    todo = [s for s in _SPLITS if not _store_done(st.store(label, s), limits[s])]
    if not todo:
        return
    enc = load_encoder(EncoderSpec(model, cfg.device, cfg.precision))
    for s in todo:
        t = st.table(s)
        res = embed(t, enc, st.store(label, s), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                    progress=cfg.progress, skipped=t.attrs.get("skipped"),
                    config={"command": "study", "dataset": str(st.root), "split": s, "limit": limits[s], "model": title})
        _say(f"embed {title} {s}: {len(res.store):,} rows ({res.rows_embedded:,} new, {res.images_per_s:.1f} img/s)")


# 2. analysis ----------------------------------------------------------------------------------
def _analyse(st: _Study) -> None:
    """The two encoders' embedding spaces side by side (similarity vs distance)."""
    _analysis_step(st, "2 analysis", "analysis", [st.store(st.labels[k], "test") for k in _ROLES],
                   [st.names[k] for k in _ROLES])


def _analysis_step(st: _Study, step: str, folder: str, stores: list[Path], names: list[str]) -> None:
    """``analyze_stores`` into ``OUT/<folder>`` (also stage 6's, the fine-tuned models vs the base model)."""
    from geosolver.analysis import analyze_stores

    dest = st.out / folder
    sample = max(2, min(st.cfg.analysis_sample, _rows(st.store(st.labels["model"], "test"))))
    st.steps.run(step, lambda: (dest / "stats.json").is_file(),
                 lambda: analyze_stores(stores, dest, sample=sample, seed=st.cfg.seed, names=names, progress=st.cfg.progress),
                 [shlex.join(["geosolver", "analyze", *map(str, stores), "--out", str(dest), "--sample", str(sample),
                              "--names", ",".join(names)])])


# 3. groups ------------------------------------------------------------------------------------
def _groups(st: _Study) -> None:
    """The group-size table of the test split over :data:`GROUP_BY` (the stores enriched first)."""
    model = st.labels["model"]
    st.steps.run("3 groups", lambda: (st.out / "groups.json").is_file(), lambda: _group_table(st),
                 [f"geosolver enrich {shlex.quote(str(st.store(model, s)))}" for s in _SPLITS]
                 + [f"geosolver curate stats {shlex.quote(str(st.store(model, 'test')))} --by {','.join(GROUP_BY)}"])


def _group_table(st: _Study) -> None:
    from geosolver.curate import format_histogram, group_size_histogram, group_table
    from geosolver.enrich import enrich_store
    from geosolver.store import EmbeddingStore

    for s in _SPLITS:
        enrich_store(st.store(st.labels["model"], s), progress=st.cfg.progress)
    store = EmbeddingStore(st.store(st.labels["model"], "test"))
    gt = group_table(store.metadata, list(GROUP_BY))
    hist = group_size_histogram(gt["n_images"].to_numpy())
    feats = [c for c in gt.columns if c != "n_images"]
    st.run.write_json("groups.json", {"by": feats, "n_images": len(store), "n_groups": len(gt),
                                      "histogram": hist.to_dict(orient="records"),
                                      "largest": gt.head(10).astype(str).to_dict(orient="records")})
    st.run.write_text("groups.txt", f"{len(store):,} images in {len(gt):,} groups by {','.join(feats)}\n"
                                    f"{format_histogram(hist)}\n")


# 4. evaluation --------------------------------------------------------------------------------
def _evaluate(st: _Study) -> None:
    """kNN geolocation of the test split against each encoder's own train-slice gallery; for a model
    with a text tower, also kNN vs zero-shot vs the text prior (``{label}-text``)."""
    for k in _ROLES:
        label = st.labels[k]
        _evaluate_step(st, f"4 evaluate {st.names[k]}", f"{label}-full", st.store(label, "test"), st.store(label, "train"))
    label = st.labels["model"]
    if _has_text_tower(st.store(label, "train")):
        _evaluate_step(
            st, f"4 evaluate {st.names['model']}: kNN vs zero-shot vs text prior", f"{label}-text", st.store(label, "test"),
            st.store(label, "train"), dict(ks=[10], priors=["none", "text"], prior_weight=[1.0], zero_shot="countries"),
            ["--k", "10", "--prior", "none,text", "--prior-weight", "1", "--zero-shot", "countries"],
        )


def _has_text_tower(store: Path) -> bool:
    """The store's encoder is a CLIP (so zero-shot and the text prior apply)."""
    return EmbeddingStore(store).encoder.get("backend") == "clip"


def _evaluate_step(
    st: _Study, step: str, name: str, queries: Path, gallery: Path, options: dict | None = None, argv: Sequence[str] = (),
) -> None:
    """One evaluation into ``OUT/runs/<name>`` (stages 4, 5 and 6), recorded in ``st.runs`` for the report;
    ``options`` go to :func:`~geosolver.evaluate.evaluate`, ``argv`` is the same as CLI options."""
    from geosolver.evaluate import evaluate

    rd = st.out / "runs" / name
    st.runs[name] = rd
    st.steps.run(step, lambda: (rd / "metrics.json").is_file(),
                 lambda: evaluate(queries, gallery, out=rd, progress=False, seed=st.cfg.seed, **(options or {})),
                 [shlex.join(["geosolver", "evaluate", "--queries", str(queries), "--gallery", str(gallery), *argv, "--out", str(rd)])])


# 5. curation ----------------------------------------------------------------------------------
def _curate(st: _Study) -> None:
    """Curated vs random galleries of each size below the train slice, evaluated on the same queries."""
    n_gallery = _rows(st.store(st.labels["model"], "train"))
    sizes = [s for s in st.cfg.gallery_sizes if s < n_gallery]
    for s in st.cfg.gallery_sizes:
        if s >= n_gallery:
            _say(f"gallery size {s:,} >= the {n_gallery:,}-image train slice: skipped (no selection to make)")
    for size in sizes:
        for strategy in STRATEGIES:
            _curate_step(st, strategy, size)


def _curate_step(st: _Study, strategy: str, size: int) -> None:
    from geosolver.curate import curate_store

    model, seed = st.labels["model"], st.cfg.seed
    gal = st.store(model, "train")
    cdir = st.out / "stores" / model / f"gallery-{strategy}-{size}"
    st.curated[f"{strategy}-{size}"] = cdir
    st.steps.run(f"5 curate {strategy} {size}", lambda: (cdir / "manifest.json").is_file(),
                 lambda: curate_store(gal, cdir, size, by=list(GROUP_BY), strategy=strategy, seed=seed),
                 [shlex.join(["geosolver", "curate", "select", str(gal), "--size", str(size), "--strategy", strategy,
                              "--by", ",".join(GROUP_BY), "--seed", str(seed), "--out", str(cdir)])])
    _evaluate_step(st, f"5 evaluate {strategy} {size}", f"{model}-{strategy}-{size}", st.store(model, "test"), cdir)


# 6. fine-tuning -------------------------------------------------------------------------------
def _finetune(st: _Study) -> None:
    """Fine-tune the model with each objective, re-embed, evaluate; analyse them beside the base model."""
    for obj in OBJECTIVES:
        _finetune_one(st, obj)
    ft_labels = [f"ft-{obj}" for obj in OBJECTIVES]
    _analysis_step(st, "6 analysis fine-tuned", "analysis-finetune",
                   [st.store(st.labels["model"], "test")] + [st.store(lb, "test") for lb in ft_labels],
                   [f"{st.names['model']} (base)"] + ft_labels)


def _finetune_one(st: _Study, obj: str) -> None:
    tcfg = _train_config(st, obj)
    tdir, label = Path(tcfg.out), f"ft-{obj}"
    st.steps.run(f"6 train {obj}", lambda: (tdir / "train_result.json").is_file() and (tdir / "model").is_dir(),
                 lambda: _train(tcfg),
                 [shlex.join(["geosolver", "train", "--data", tcfg.root, "--dataset", "osv5m", "--split", "train",
                              "--limit", str(tcfg.limit), "--model", tcfg.model, "--objective", obj,
                              "--steps", str(tcfg.steps), "--batch-size", str(tcfg.batch_size),
                              "--eval-every", str(tcfg.eval_every), "--device", tcfg.device,
                              "--precision", tcfg.precision, "--out", tcfg.out])])
    mdir = str(tdir / "model")
    _embed_step(st, f"6 embed {label}", label, mdir, label)
    _evaluate_step(st, f"6 evaluate {label}", f"{label}-full", st.store(label, "test"), st.store(label, "train"))


def _train_config(st: _Study, obj: str):
    """The fine-tuning run of ``obj``: batch a multiple of 4 that fits the slice, bf16/fp32 or auto."""
    from geosolver.train import TrainConfig

    cfg = st.cfg
    n_train_rows = _rows(st.store(st.labels["model"], "train"))
    tb = max(4, min(cfg.train_batch_size, n_train_rows // 2) // 4 * 4)
    tprec = cfg.precision if cfg.precision in ("fp32", "bf16") else "auto"
    return TrainConfig(out=str(st.out / "train" / obj), root=str(st.root), dataset="osv5m", split="train",
                       limit=cfg.train_limit, model=st.paths["model"], objective=obj, steps=cfg.steps, batch_size=tb,
                       eval_every=max(cfg.steps // 5, 1), device=cfg.device, precision=tprec, seed=cfg.seed,
                       num_workers=cfg.num_workers, cache_images=n_train_rows <= 2000, progress=cfg.progress)


def _train(tcfg) -> None:
    from geosolver.train import train

    res = train(tcfg)
    RunDir(tcfg.out, "train").write_json("train_result.json", {
        "steps": res.steps, "best_step": res.best_step, "seconds": res.seconds,
        "initial_metrics": res.initial_metrics, "best_metrics": res.best_metrics, "final_metrics": res.final_metrics})


# 7. report ------------------------------------------------------------------------------------
def _report(st: _Study) -> dict:
    """``summary.json``, ``report.md`` and ``report.html`` from what the stages wrote; returns the summary."""
    parts = _report_parts(st, time.time() - st.t_start)
    summary = _write_summary(st, parts)
    atomic_write_text(st.out / "report.md", _report_md(st, parts))
    atomic_write_text(st.out / "report.html", page("Geosolver founding study", _report_html(st, parts)))
    _say(f"done in {time.time() - st.t_start:.0f}s: open {st.out / 'report.html'}")
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



@dataclass
class _ReportParts:
    """The report's tables (markdown) and lines, shared by ``summary.json``, ``report.md`` and ``report.html``."""

    total_s: float
    metrics: dict  # run → its metrics.json
    trains: dict  # objective → its train_result.json
    first: Path  # the model's full-gallery run: its error plots lead the report
    has_curation: bool
    encoders: str
    encoders_all: str
    text: str
    curation: str
    finetune: str
    analysis: str
    analysis_ft: str
    groups: str
    training: str
    timings: str
    commands: str
    hardware: str
    estimate: str


def _report_parts(st: _Study, total_s: float) -> _ReportParts:
    from geosolver.evaluate import compare_runs, metrics_markdown

    out, runs, steps, hw, est = st.out, st.runs, st.steps, st.hw, st.est
    base = runs[f"{st.labels['model']}-full"]
    full = [runs[f"{st.labels[k]}-full"] for k in _ROLES]
    text_run = runs.get(f"{st.labels['model']}-text")
    cur = [runs[n] for n in runs if any(n.endswith(f"-{c}") for c in st.curated)]
    ft = [base] + [runs[n] for n in runs if n.startswith("ft-")]
    _, md_curation = compare_runs([base, *cur]) if cur else (None, "(no gallery size below the train slice)")
    trains = {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "train").glob("*/train_result.json"))}
    return _ReportParts(
        total_s=total_s, metrics={n: json.loads((rd / "metrics.json").read_text()) for n, rd in runs.items()},
        trains=trains, first=full[0], has_curation=bool(cur),
        encoders=compare_runs(full)[1], encoders_all=compare_runs(full, all_rows=True)[1], curation=md_curation,
        text=metrics_markdown(json.loads((text_run / "metrics.json").read_text())) if text_run else
        f"({st.names['model']} has no text tower: no zero-shot or text prior)",
        finetune=compare_runs(ft)[1], analysis=_analysis_md(out / "analysis"),
        analysis_ft=_analysis_md(out / "analysis-finetune"), groups=_groups_md(out),
        training="\n".join(["| objective | steps | kept step | seconds | base Geoscore (val) | kept Geoscore (val) |",
                            "|---|---|---|---|---|---|"] + [
            f"| {k} | {v['steps']} | {v['best_step']} | {v['seconds']:.0f} | "
            f"{v['initial_metrics'].get('geoscore', float('nan')):.0f} | "
            f"{v['best_metrics'].get('geoscore', float('nan')):.0f} |" for k, v in trains.items()]),
        timings="\n".join(["| step | status | seconds |", "|---|---|---|"] + [
            f"| {k} | {v} | {steps.timings.get(k, 0):.1f} |" for k, v in steps.status.items()]),
        commands="\n".join(f"# {step}\n" + "\n".join(c) for step, c in steps.commands.items() if c),
        hardware=(f"{hw['device_name']} ({'CUDA' if hw['cuda'] else 'CPU only'}), {hw['cpu_count']} CPUs, "
                  f"torch {hw['torch']}, {hw['platform']}"),
        estimate=(f"Estimate printed before starting (assumed {est['assumed_rates']['embed_img_s']:g} img/s embedding, "
                  f"{est['assumed_rates']['train_img_s']:g} img/s training on {est['device']}): "
                  f"{_fmt_s(est['seconds'])}, {est['disk_bytes'] / 1e9:.1f} GB. Actual: {_fmt_s(total_s)} this run."),
    )


def _write_summary(st: _Study, p: _ReportParts) -> dict:
    summary = {
        "config": asdict(st.cfg), "models": st.names,
        "runs": {n: {"best": m.get("best"), "references": m.get("references")} for n, m in p.metrics.items()},
        "training": p.trains,
        "groups": json.loads((st.out / "groups.json").read_text()),
        "steps": st.steps.status, "timings_s": {k: round(v, 2) for k, v in st.steps.timings.items()},
        "total_s": round(p.total_s, 2), "hardware": st.hw, "estimate": st.est, "commands": st.steps.commands,
    }
    RunDir(st.out, "study").write_json("summary.json", summary)
    return summary


def _report_md(st: _Study, p: _ReportParts) -> str:
    cfg, out, names = st.cfg, st.out, st.names
    return "\n".join([
        "# Geosolver founding study (OSV5M)", "",
        f"Encoders: {names['model']} vs {names['baseline']}; test queries {cfg.test_limit or 'all'}, train slice "
        f"{cfg.train_limit:,} (the gallery). Dataset root `{cfg.root}`.", "",
        "## 1. Encoders: best row of each (with random and oracle references)", "", p.encoders, "",
        "## All strategies", "", p.encoders_all, "",
        "## 2. Embedding space (similarity vs distance)", "", p.analysis, "",
        "## 3. Group sizes of the test split", "", p.groups, "",
        f"## 4. {names['model']}: kNN vs zero-shot vs the text prior (k = 10)", "", p.text, "",
        "## 5. Curated vs random galleries", "", p.curation, "",
        "## 6. Fine-tuning", "", p.training, "", p.finetune, "", p.analysis_ft, "",
        "## Plots", "", f"![error map]({p.first.relative_to(out)}/errors_map.png)", "",
        *[f"![curation {k}]({c.relative_to(out)}/map.png)" for k, c in st.curated.items() if (c / "map.png").exists()], "",
        "## Timings", "", p.timings, "", p.estimate, "",
        "## Hardware", "", p.hardware, "",
        "## Commands reproducing each step", "", "```", p.commands, "```", "",
    ])


def _text_html(text: str) -> list[str]:
    """The kNN / zero-shot / text-prior table (markdown table + its note) as HTML, or the sentence saying why there is none."""
    table, _, note = text.partition("\n\n")
    if not table.startswith("|"):
        return [f"<p>{html.escape(text)}</p>"]
    return [markdown_table_html(table), f"<p>{html.escape(note)}</p>"]


def _report_html(st: _Study, p: _ReportParts) -> str:
    cfg, out, names, first = st.cfg, st.out, st.names, p.first
    imgs = lambda d: [img_tag(f, f.stem) for f in sorted(d.glob("*.png"))]  # noqa: E731
    return "\n".join([
        "<h1>Geosolver founding study (OSV5M)</h1>",
        f"<p>Encoders: <b>{names['model']}</b> vs <b>{names['baseline']}</b>; test queries {cfg.test_limit or 'all'}, "
        f"train slice (gallery) {cfg.train_limit:,}. Geoscore = 5000·exp(−km/1492.7), 95 % bootstrap interval; "
        "<b>random</b> guesses a random gallery location, <b>oracle</b> is the gallery coordinate nearest the truth.</p>",
        "<h2>1. Encoders against the full gallery</h2>", markdown_table_html(p.encoders),
        "<h3>All strategies</h3>", markdown_table_html(p.encoders_all),
        "<div class='grid'>", img_tag(first / "errors_map.png", "error map"),
        img_tag(first / "errors_hist.png", "error distribution"), "</div>",
        "<h2>2. Embedding space: similarity vs distance</h2>", markdown_table_html(p.analysis), *imgs(out / "analysis"),
        "<h2>3. Group sizes of the test split</h2>", markdown_table_html(p.groups),
        f"<p>{p.groups.splitlines()[0]}</p>",
        f"<h2>4. {names['model']}: kNN vs zero-shot (countries) vs kNN with the text prior (k = 10)</h2>",
        *_text_html(p.text),
        "<h2>5. Curated (grouped-clustered) vs random galleries</h2>",
        "<p>Same size, chosen two ways from the model's train-slice gallery; the same test queries.</p>",
        markdown_table_html(p.curation) if p.has_curation else f"<p>{p.curation}</p>",
        "<div class='grid'>", *[img_tag(c / "map.png", k) for k, c in st.curated.items() if (c / "map.png").exists()],
        "</div>",
        "<h2>6. Fine-tuning: distance-consistency and geo-contrastive vs the base model</h2>",
        markdown_table_html(p.training), markdown_table_html(p.finetune), markdown_table_html(p.analysis_ft),
        *imgs(out / "analysis-finetune"),
        *[img_tag(f, f"training {f.parent.name}") for f in sorted((out / "train").glob("*/training.png"))],
        "<h2>Timings</h2>", markdown_table_html(p.timings), f"<p>{p.estimate}</p>",
        "<h2>Hardware</h2>", f"<p>{p.hardware}</p>",
        "<h2>Commands reproducing each step</h2>",
        "<pre>" + p.commands.replace("&", "&amp;").replace("<", "&lt;") + "</pre>",
    ])
