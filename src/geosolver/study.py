"""`geosolver study`: the founding study on OSV5M, every step through the public library API.

Before anything is read in full or written, :func:`validate` checks the dataset root (both splits' CSV
headers and image folders), both encoders (offline, a model directory, cached, or listed by the hub — no
weights downloaded), every option and ``--out``, in seconds. Then :func:`estimate` prints the time and disk
still needed (what is already on disk is not counted), from the assumed per-image costs of
:data:`geosolver.study_check.ENCODER_COSTS`.

Steps (each skipped when its output already exists, so a killed study resumes where it stopped):

0. models: the two encoders' snapshots in the Hugging Face cache (:func:`geosolver.hub.ensure_model`;
   cached → no request). Encoders are loaded by their names, so stores record the hub id and commit;
1. embed the test split and a train slice with both encoders (:func:`geosolver.embed.embed`);
2. analysis of both encoders side by side (:func:`geosolver.analysis.analyze_stores`);
3. the group-size table of the test split over (cell, land_cover, climate, soil)
   (:func:`geosolver.enrich.enrich_store` + :func:`geosolver.curate.group_table`);
4. kNN evaluation of test against the train-slice gallery for both encoders (:func:`geosolver.evaluate.evaluate`);
   for the model, when it has a text tower (StreetCLIP does), one more run: kNN vs zero-shot
   (countries) vs kNN with the text prior at k = 10 (run ``{label}-text``); then both location heads
   (cells, flow) trained on the model's gallery embeddings, alone and fused with kNN (``heads/{label}``);
5. curated (``grouped-clustered``) vs ``random`` galleries of ``gallery_sizes`` images, evaluated on
   the same queries (:func:`geosolver.curate.curate_store`);
6. fine-tuning the model on the train slice with each of :data:`ARMS` — soft-target contrastive (the best
   objective of ``benchmarks/finetune.py``), sharpened distance-consistency (the best consistency form) and
   the seed's plain distance-consistency — (:func:`geosolver.train.train`, given the table already read),
   re-embedding, evaluation and analysis against the base model;
7. ``report.html`` (self-contained), ``report.md``, ``summary.json``: every table and plot, the command
   lines reproducing each step, timings and the hardware.

Each split's CSV is read once per study, only the columns in :data:`STUDY_COLUMNS`.
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

from geosolver.analysis import analyze_stores
from geosolver.analysis.report import table_rows
from geosolver.curate import curate_store, format_histogram, group_size_histogram, group_table
from geosolver.data.osv5m import read_osv5m
from geosolver.embed import embed
from geosolver.encoders import DEFAULT_ENCODER, PRECISIONS, EncoderSpec, has_text_tower, load_encoder
from geosolver.encoders.base import resolve_device
from geosolver.enrich import enrich_store
from geosolver.errors import GeosolverError, UserError
from geosolver.evaluate import compare_runs, evaluate, metrics_markdown
from geosolver.files import atomic_write_json, atomic_write_text, jsonable
from geosolver.heads.study import study_step
from geosolver.htmlreport import img_tag, markdown_table_html, page
from geosolver.hub import cached_model, ensure_model, model_repo_id
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore
from geosolver.study_check import ENCODER_COSTS, EncoderCheck, check_encoder, check_out, check_root, count_rows
from geosolver.train import TrainConfig, train

log = logging.getLogger(__name__)

GROUP_BY = ("cell", "land_cover", "climate", "soil")
#: The metadata columns kept from OSV5M's CSV (of its 32): the group-table features and the country
#: (evaluation's country accuracy). The others are never read.
STUDY_COLUMNS = ("country", *GROUP_BY)
#: The fine-tuning arms: name → :class:`~geosolver.train.TrainConfig` settings. Soft-target contrastive was
#: the best objective of this project's benchmark (README, "Does distance-consistency help?"), the sharpened
#: target (``sharpen`` 2) the best of the consistency forms; the seed's plain form is trained beside them.
ARMS: dict[str, dict] = {
    "soft-contrastive": {"objective": "soft-contrastive"},
    "dc-sharp2": {"objective": "distance-consistency", "sharpen": 2.0},
    "dc-plain": {"objective": "distance-consistency", "sharpen": 1.0},
}
STRATEGIES = ("grouped-clustered", "random")
#: Parquet metadata bytes per stored row (id, coordinates, the study's columns), about.
ROW_METADATA_BYTES = 600


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
    train: str = "last-blocks"  # what is fine-tuned: geosolver.train.config.TRAIN_MODES (lora, last-blocks, ...)
    blocks: int = 2  # N of last-blocks N
    lr: float | None = None  # None: the training mode's default
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
    import torch  # torch: optional heavy backend

    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["device_name"] = platform.processor() or platform.machine() or "cpu"
    return info


def _device_kind(device: str) -> str:
    import torch  # torch: optional heavy backend

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def _labels(cfg: StudyConfig) -> dict[str, str]:
    """Role (model, baseline) → its folder under ``stores/`` (also its runs' prefix)."""
    labels = {"model": _slug(cfg.model), "baseline": _slug(cfg.baseline)}
    if labels["model"] == labels["baseline"]:
        labels["baseline"] += "-baseline"
    return labels


def _to_embed(store: Path, n: int, limit: int | None) -> int:
    """How many of ``n`` inputs the store at ``store`` still has to embed (complete: none; a killed run:
    those of the chunks not yet committed)."""
    if not (store / "manifest.json").is_file():
        return n
    try:
        st = EmbeddingStore(store)
    except GeosolverError:
        return n
    if st.manifest.get("config", {}).get("limit", "unset") != limit:
        return n
    return 0 if st.complete else max(0, n - sum(int(s.get("n_inputs", 0)) for s in st.shards))


def _trained(tdir: Path) -> bool:
    return (tdir / "train_result.json").is_file() and (tdir / "model").is_dir()


def estimate(cfg: StudyConfig, encoders: dict[str, EncoderCheck], n_test: int) -> dict:
    """Time and disk the study still needs: only the stores, training runs and galleries not on disk yet,
    each at its encoder's ASSUMED per-image cost (:data:`~geosolver.study_check.ENCODER_COSTS`).

    Args:
        encoders: role (model, baseline) → :func:`~geosolver.study_check.check_encoder`'s answer.
        n_test: the test queries (``--test-limit``, at most the CSV's rows).
    """
    kind = _device_kind(cfg.device)
    out, labels = Path(cfg.out), _labels(cfg)
    n = {"test": n_test, "train": cfg.train_limit}
    limits = {"test": cfg.test_limit, "train": cfg.train_limit}
    cost = {k: ENCODER_COSTS[e.size_class] for k, e in encoders.items()}
    tally = {"embedded": 0, "trained": 0, "seconds": 0.0, "disk": 0.0}

    def embed(label: str, c: dict) -> None:
        for s in _SPLITS:
            todo = _to_embed(out / "stores" / label / s, n[s], limits[s])
            tally["embedded"] += todo
            tally["seconds"] += todo / c["embed"][kind]
            tally["disk"] += todo * (2 * c["dim"] + ROW_METADATA_BYTES)

    for k in _ROLES:
        embed(labels[k], cost[k])
    downloads = {e.name: e.download_bytes for e in encoders.values()}
    tally["disk"] += sum(downloads.values())
    for size in cfg.gallery_sizes:
        for strategy in STRATEGIES:
            if size < cfg.train_limit and not (out / "stores" / labels["model"] / f"gallery-{strategy}-{size}" / "manifest.json").is_file():
                tally["disk"] += size * (2 * cost["model"]["dim"] + ROW_METADATA_BYTES)
    for arm in ARMS:
        if not _trained(out / "train" / arm):
            images = cfg.steps * cfg.train_batch_size
            tally["trained"] += images
            tally["seconds"] += images / cost["model"]["train"][kind]
            tally["disk"] += cost["model"]["bytes"]
        embed(f"ft-{arm}", cost["model"])
    assumed = {k: {"encoder": e.name, "class": e.size_class, "embed_img_s": cost[k]["embed"][kind],
                   "train_img_s": cost[k]["train"][kind]} for k, e in encoders.items()}
    return {"device": kind, "assumed": assumed, "images_embedded": tally["embedded"], "images_trained": tally["trained"],
            "seconds": tally["seconds"], "disk_bytes": tally["disk"], "n_test": n_test, "n_train": cfg.train_limit}


def _estimate_text(est: dict) -> str:
    rates = "; ".join(f"{a['encoder']} as {a['class']}: embedding {a['embed_img_s']:g} img/s, training {a['train_img_s']:g} img/s"
                      for a in est["assumed"].values())
    return (f"estimate ({est['device']}; ASSUMED per-image rates, not measurements — {rates}): "
            f"{est['images_embedded']:,} images still to embed + {est['images_trained']:,} to train ≈ {_fmt_s(est['seconds'])}, "
            f"disk ≈ {est['disk_bytes'] / 1e9:.1f} GB more (stores, model downloads, fine-tuned models; the dataset not "
            f"included; what is already on disk is not counted). These are estimates; the report records the real timings.")


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

    st = EmbeddingStore(path)
    return st.complete and st.manifest.get("config", {}).get("limit", "unset") == limit



# ----------------------------------------------------------------------------------------------
# the study: a list of stages sharing one state
# ----------------------------------------------------------------------------------------------
_ROLES = ("model", "baseline")
_SPLITS = ("test", "train")


def run_study(cfg: StudyConfig) -> dict:
    """Run (or resume) the study; writes ``OUT/report.html`` and returns ``summary.json``'s content.

    Raises:
        GeosolverError: :func:`validate` found something wrong (nothing written), or a step failed.
    """
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
    encoders: dict[str, EncoderCheck]  # role → where it comes from (validate)
    steps: _Steps = field(default_factory=_Steps)
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
        """The split's reader table: its CSV read once per study, only :data:`STUDY_COLUMNS`."""
        if split not in self.tables:
            self.tables[split] = read_osv5m(self.root, split=split, limit=self.limits[split], columns=STUDY_COLUMNS)
        return self.tables[split]


#: (field, option, smallest value, None allowed) of the study's own integer settings.
_INT_RULES = (("test_limit", "--test-limit", 1, True), ("train_limit", "--train-limit", 8, False),
              ("steps", "--steps", 1, False), ("batch_size", "--batch-size", 1, False),
              ("train_batch_size", "--train-batch-size", 4, False), ("num_workers", "--num-workers", 0, True),
              ("analysis_sample", "--analysis-sample", 2, False), ("seed", "--seed", 0, False))


def _check_options(cfg: StudyConfig) -> None:
    """Every setting, before anything is read: the study's own numbers, the device, the precision and
    each fine-tuning run's settings (:meth:`TrainConfig.check`)."""
    for name, option, low, optional in _INT_RULES:
        v = getattr(cfg, name)
        if v is None and optional:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise UserError(f"{option} must be an integer >= {low}, got {v!r}")
    sizes = cfg.gallery_sizes
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise UserError(f"--gallery-sizes must be integers >= 1, got {sizes!r}")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    resolve_device(cfg.device)
    for arm in ARMS:
        _train_config(cfg, arm, Path(cfg.out), cfg.train_limit).check()


def validate(cfg: StudyConfig) -> tuple[dict[str, Path], dict[str, EncoderCheck]]:
    """Check every option, ``--out``, the dataset root and both encoders — in seconds, reading headers
    and listings only, writing nothing.

    Returns:
        split → its CSV, and role (model, baseline) → where the encoder comes from.

    Raises:
        GeosolverError: the first thing wrong, in one line.
    """
    _check_options(cfg)
    check_out(cfg.out)
    csvs = check_root(cfg.root)
    encoders = {"model": check_encoder(cfg.model, "--model"), "baseline": check_encoder(cfg.baseline, "--baseline")}
    return csvs, encoders


def _start(cfg: StudyConfig) -> _Study:
    """Validate, print the estimate and the hardware, write ``config.json``, name the two encoders' stores."""
    t_start = time.time()
    csvs, encoders = validate(cfg)
    n_test = count_rows(csvs["test"])
    est = estimate(cfg, encoders, min(n_test, cfg.test_limit or n_test))
    _say(_estimate_text(est))
    hw = hardware()
    _say(f"hardware: {hw['device_name']}, {hw['cpu_count']} CPUs")
    root = Path(os.path.abspath(cfg.root))
    run = RunDir(cfg.out, "study")
    run.write_config({**asdict(cfg), "root": str(root), "estimate": est, "hardware": hw})
    names = {"model": cfg.model, "baseline": cfg.baseline}
    return _Study(cfg, run, root, names, _labels(cfg), hw, est, t_start, encoders)


# 0. models ------------------------------------------------------------------------------------
def _hub_models(st: _Study) -> list[str]:
    return list(dict.fromkeys(st.names[k] for k in _ROLES if st.encoders[k].source in ("cached", "hub")))


def _models(st: _Study) -> None:
    """The hub encoders' snapshots in the Hugging Face cache (cached → no request). The study loads
    them by name, so its stores record the hub id and commit, valid wherever the cache moves."""
    names = _hub_models(st)
    st.steps.run("0 models", lambda: all(cached_model(model_repo_id(n)) is not None for n in names),
                 lambda: [ensure_model(n, progress=st.cfg.progress) for n in names],
                 [f"geosolver download model {shlex.quote(n)}" for n in names])


# 1. embed -------------------------------------------------------------------------------------
def _embed(st: _Study) -> None:
    """The test split and the train slice, embedded with both encoders."""
    for k in _ROLES:
        _embed_step(st, f"1 embed {st.names[k]}", st.labels[k], st.names[k], st.names[k])


def _embed_step(st: _Study, step: str, label: str, model: str, title: str) -> None:
    """``model``'s test and train stores under ``stores/<label>/`` (also stage 6's, for each fine-tuned model)."""
    cfg, limits = st.cfg, st.limits
    cmds = [shlex.join(["geosolver", "embed", "--dataset", "osv5m", "--root", str(st.root), "--split", s,
                        *(["--limit", str(limits[s])] if limits[s] else []), "--model", model,
                        "--out", str(st.store(label, s)), "--device", cfg.device, "--precision", cfg.precision])
            for s in _SPLITS]
    st.steps.run(step, lambda: st.stores_done(label), lambda: _embed_splits(st, label, model, title), cmds)


def _embed_splits(st: _Study, label: str, model: str, title: str) -> None:
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
    _heads_step(st, label)


def _heads_step(st: _Study, label: str) -> None:
    """Both location heads (cells, flow) trained on the model's train-slice gallery embeddings, then
    kNN vs each head vs each fused with kNN on the test queries (``OUT/heads/<label>/heads.md``)."""
    hd = st.out / "heads" / label
    gallery, queries = st.store(label, "train"), st.store(label, "test")

    def run() -> None:
        res = study_step(gallery, queries, hd, device=st.cfg.device, k=10, progress=False)
        atomic_write_text(hd / "heads.md", res["markdown"] + "\n")
        atomic_write_json(hd / "heads.json", jsonable({"rows": res["rows"], "heads": res["heads"]}))  # the step's commit point

    cmds = [shlex.join(["geosolver", "head", "train", "--gallery", str(gallery), "--kind", kind, "--out", str(hd / f"head-{kind}"),
                        "--device", st.cfg.device]) for kind in ("cells", "flow")]
    cmds += [shlex.join(["geosolver", "evaluate", "--queries", str(queries), "--gallery", str(gallery), "--strategy", "densest",
                         "--k", "10", "--head", str(hd / "head-cells"), "--fuse", "none,head", "--head-weight", "1",
                         "--out", str(hd / "eval-cells")])]
    st.steps.run(f"4 heads {st.names['model']}: kNN vs location heads vs fused", lambda: (hd / "heads.json").is_file(), run, cmds)


def _has_text_tower(store: Path) -> bool:
    """The store's encoder has a text tower (so zero-shot and the text prior apply)."""
    return has_text_tower(EmbeddingStore(store).encoder)


def _evaluate_step(
    st: _Study, step: str, name: str, queries: Path, gallery: Path, options: dict | None = None, argv: Sequence[str] = (),
) -> None:
    """One evaluation into ``OUT/runs/<name>`` (stages 4, 5 and 6), recorded in ``st.runs`` for the report;
    ``options`` go to :func:`~geosolver.evaluate.evaluate`, ``argv`` is the same as CLI options."""
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
    """Fine-tune the model in each of :data:`ARMS`, re-embed, evaluate; analyse them beside the base model."""
    for arm in ARMS:
        _finetune_one(st, arm)
    ft_labels = [f"ft-{arm}" for arm in ARMS]
    _analysis_step(st, "6 analysis fine-tuned", "analysis-finetune",
                   [st.store(st.labels["model"], "test")] + [st.store(lb, "test") for lb in ft_labels],
                   [f"{st.names['model']} (base)"] + ft_labels)


def _finetune_one(st: _Study, arm: str) -> None:
    tcfg = _train_config(st.cfg, arm, st.out, _rows(st.store(st.labels["model"], "train")))
    tdir, label = Path(tcfg.out), f"ft-{arm}"
    st.steps.run(f"6 train {arm}", lambda: _trained(tdir), lambda: _train(tcfg, st.table("train")), [_train_command(tcfg)])
    mdir = str(tdir / "model")
    _embed_step(st, f"6 embed {label}", label, mdir, label)
    _evaluate_step(st, f"6 evaluate {label}", f"{label}-full", st.store(label, "test"), st.store(label, "train"))


def _train_config(cfg: StudyConfig, arm: str, out: Path, n_train_rows: int):
    """The fine-tuning run of ``arm`` under ``out/train/``: the arm's objective, the study's training
    mode, a batch that is a multiple of 4 fitting the slice, bf16/fp32 or auto."""
    tb = max(4, min(cfg.train_batch_size, n_train_rows // 2) // 4 * 4)
    tprec = cfg.precision if cfg.precision in ("fp32", "bf16") else "auto"
    return TrainConfig(out=str(out / "train" / arm), root=os.path.abspath(cfg.root), dataset="osv5m", split="train",
                       limit=cfg.train_limit, model=cfg.model, **ARMS[arm], train=cfg.train, blocks=cfg.blocks, lr=cfg.lr,
                       steps=cfg.steps, batch_size=tb, eval_every=max(cfg.steps // 5, 1), device=cfg.device,
                       precision=tprec, seed=cfg.seed, num_workers=cfg.num_workers, cache_images=n_train_rows <= 2000,
                       progress=cfg.progress)


def _train_command(t) -> str:
    """The ``geosolver train`` line of the run ``t`` (a :class:`TrainConfig`)."""
    mode = ["--train", t.train, *([str(t.blocks)] if t.train == "last-blocks" else [])]
    return shlex.join(["geosolver", "train", "--data", t.root, "--dataset", "osv5m", "--split", "train",
                       "--limit", str(t.limit), "--model", t.model, "--objective", t.objective, "--sharpen", f"{t.sharpen:g}",
                       *mode, *(["--lr", f"{t.lr:g}"] if t.lr is not None else []), "--steps", str(t.steps),
                       "--batch-size", str(t.batch_size), "--eval-every", str(t.eval_every), "--device", t.device,
                       "--precision", t.precision, "--out", t.out])


def _train(tcfg, table) -> None:
    """:func:`geosolver.train.train` on the table the study already read (no second read of the CSV)."""
    res = train(tcfg, table=table)
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
    return len(EmbeddingStore(store))


def _analysis_md(path: Path) -> str:
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
    heads: str
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
    out, runs, steps, hw, est = st.out, st.runs, st.steps, st.hw, st.est
    base = runs[f"{st.labels['model']}-full"]
    full = [runs[f"{st.labels[k]}-full"] for k in _ROLES]
    text_run = runs.get(f"{st.labels['model']}-text")
    cur = [runs[n] for n in runs if any(n.endswith(f"-{c}") for c in st.curated)]
    ft = [base] + [runs[n] for n in runs if n.startswith("ft-")]
    _, md_curation = compare_runs([base, *cur]) if cur else (None, "(no gallery size below the train slice)")
    trains = {a: json.loads((out / "train" / a / "train_result.json").read_text()) for a in ARMS
              if (out / "train" / a / "train_result.json").is_file()}
    return _ReportParts(
        total_s=total_s, metrics={n: json.loads((rd / "metrics.json").read_text()) for n, rd in runs.items()},
        trains=trains, first=full[0], has_curation=bool(cur),
        encoders=compare_runs(full)[1], encoders_all=compare_runs(full, all_rows=True)[1], curation=md_curation,
        text=metrics_markdown(json.loads((text_run / "metrics.json").read_text())) if text_run else
        f"({st.names['model']} has no text tower: no zero-shot or text prior)",
        heads=(out / "heads" / st.labels["model"] / "heads.md").read_text().strip(),
        finetune=compare_runs(ft)[1], analysis=_analysis_md(out / "analysis"),
        analysis_ft=_analysis_md(out / "analysis-finetune"), groups=_groups_md(out),
        training="\n".join(["| arm | steps | kept step | seconds | base Geoscore (val) | kept Geoscore (val) |",
                            "|---|---|---|---|---|---|"] + [
            f"| {k} | {v['steps']} | {v['best_step']} | {v['seconds']:.0f} | "
            f"{v['initial_metrics'].get('geoscore', float('nan')):.0f} | "
            f"{v['best_metrics'].get('geoscore', float('nan')):.0f} |" for k, v in trains.items()]),
        timings="\n".join(["| step | status | seconds |", "|---|---|---|"] + [
            f"| {k} | {v} | {steps.timings.get(k, 0):.1f} |" for k, v in steps.status.items()]),
        commands="\n".join(f"# {step}\n" + "\n".join(c) for step, c in steps.commands.items() if c),
        hardware=(f"{hw['device_name']} ({'CUDA' if hw['cuda'] else 'CPU only'}), {hw['cpu_count']} CPUs, "
                  f"torch {hw['torch']}, {hw['platform']}"),
        estimate=f"{_estimate_text(est)} Actual: {_fmt_s(total_s)} this run.",
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
        f"## 4b. {names['model']}: kNN vs location heads (cells, flow) vs each fused with kNN (k = 10, λ = 1)", "", p.heads, "",
        "## 5. Curated vs random galleries", "", p.curation, "",
        "## 6. Fine-tuning", "", p.training, "", p.finetune, "", p.analysis_ft, "",
        "## Plots", "", f"![error map]({p.first.relative_to(out)}/errors_map.png)", "",
        *[f"![curation {k}]({c.relative_to(out)}/map.png)" for k, c in st.curated.items() if (c / "map.png").exists()], "",
        "## Timings", "", p.timings, "", p.estimate, "",
        "## Hardware", "", p.hardware, "",
        "## Commands reproducing each step", "", "```", p.commands, "```", "",
    ])


def _arm_text(arm: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in ARMS[arm].items())


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
        f"<h2>4b. {names['model']}: kNN vs location heads (cells, flow) vs each fused with kNN (k = 10, λ = 1)</h2>",
        "<p>Heads trained on the gallery's stored embeddings (no image re-read); see the README's heads section.</p>",
        markdown_table_html(p.heads),
        "<h2>5. Curated (grouped-clustered) vs random galleries</h2>",
        "<p>Same size, chosen two ways from the model's train-slice gallery; the same test queries.</p>",
        markdown_table_html(p.curation) if p.has_curation else f"<p>{p.curation}</p>",
        "<div class='grid'>", *[img_tag(c / "map.png", k) for k, c in st.curated.items() if (c / "map.png").exists()],
        "</div>",
        "<h2>6. Fine-tuning: soft-target contrastive, sharpened and plain distance-consistency vs the base model</h2>",
        f"<p>Arms: {html.escape(', '.join(f'{a} ({_arm_text(a)})' for a in ARMS))}; trained: {html.escape(cfg.train)}.</p>",
        markdown_table_html(p.training), markdown_table_html(p.finetune), markdown_table_html(p.analysis_ft),
        *imgs(out / "analysis-finetune"),
        *[img_tag(f, f"training {f.parent.name}") for f in sorted((out / "train").glob("*/training.png"))],
        "<h2>Timings</h2>", markdown_table_html(p.timings), f"<p>{p.estimate}</p>",
        "<h2>Hardware</h2>", f"<p>{p.hardware}</p>",
        "<h2>Commands reproducing each step</h2>",
        "<pre>" + p.commands.replace("&", "&amp;").replace("<", "&lt;") + "</pre>",
    ])
