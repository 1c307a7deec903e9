"""One GPU check for the day a GPU is lent: < 8 minutes, prints a markdown table.

Sections (StreetCLIP's architecture — ViT-L/14-336 with random weights via ``CLIPConfig``: the same
cost as the real weights — over generated 512×384 JPEGs):

* ``matmul``: the machine's measured bf16 matmul rate (a big ``torch.matmul`` loop), TFLOP/s;
* ``embed``: model-only (``Encoder.embed_pixels`` on ready tensors) vs end-to-end
  (:func:`geosolver.embed.embed`: decode + preprocess in workers + model) images/s, in bf16 and fp16;
  the target is end-to-end ≥ 80 % of model-only; model-only is also given as a fraction of the
  matmul rate (≈ 3.8·10¹¹ FLOP per image for ViT-L/14 at 336 px);
* ``train``: a fine-tuning step rate and peak memory for LoRA and last-blocks at the largest batch
  that fits (tries 256, 128, 64, 32; :func:`geosolver.train.train`);
* ``faiss``: GPU flat search where ``faiss.get_num_gpus() > 0``;
* ``heads``: location-head training and inference rates (embeddings/s) of the cells and flow heads
  (:mod:`geosolver.heads`) on a synthetic store of 768-d embeddings (200 000 rows on a GPU).

Installs nothing; says what it could not run. Without CUDA it prints one line and exits 0, unless
``--cpu-smoke``: the same code paths with a tiny CLIP and tiny sizes on the CPU (a test that it runs).

    python benchmarks/gpu_check.py              # on a GPU machine
    python benchmarks/gpu_check.py --cpu-smoke  # anywhere, ~1 minute
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_throughput import VIT_L14_336, _folder_table, make_jpegs, save_random_clip  # noqa: E402
from train_gpu import make_images  # noqa: E402

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32)


def vit_flops_per_image(v: dict) -> float:
    """Forward FLOPs of a ViT vision tower per image (2 FLOPs per multiply-add; patch embedding and
    heads ignored): per layer 12·N·d² (projections + 4d MLP) + 2·N²·d (attention) MACs."""
    n = (v["image_size"] // v["patch_size"]) ** 2 + 1
    d = v["hidden_size"]
    macs = v["num_hidden_layers"] * (4 * n * d * d + 2 * n * d * v["intermediate_size"] + 2 * n * n * d)
    return 2.0 * macs


def matmul_tflops(device: str, dtype, size: int, seconds: float) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            torch.matmul(a, b)
        n += 10
        _sync(device)
    return 2.0 * size**3 * n / (time.perf_counter() - t0) / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only_rate(enc, batch: int, side: int, seconds: float, device: str) -> float:
    import torch

    x = torch.randn(batch, 3, side, side, device=device)
    enc.embed_pixels(x)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        enc.embed_pixels(x)
        n += batch
    _sync(device)
    return n / (time.perf_counter() - t0)


def end_to_end_rate(enc, paths: list[str], batch: int, workers: int, out: Path) -> float:
    from geosolver.embed import embed

    table = _folder_table(paths)
    embed(table.iloc[: batch * 2], enc, out / "warm", batch_size=batch, num_workers=workers, progress=False)
    t0 = time.perf_counter()
    embed(table, enc, out / "run", batch_size=batch, num_workers=workers, progress=False)
    return len(table) / (time.perf_counter() - t0)


def train_rate(model: str, csv: Path, mode: dict, batches: list[int], steps: int, device: str, out: Path) -> dict:
    import torch

    from geosolver.train import TrainConfig, train

    last_err = ""
    for bs in batches:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(out=str(out / f"{mode['train']}-{bs}"), root=str(csv.parent), csv=str(csv), model=model,
                          objective="both", steps=steps, batch_size=bs, group_size=4, eval_every=0, val_fraction=0.0,
                          curve_sample=256, warmup_steps=1, device=device, precision="auto",
                          num_workers=min(8, os.cpu_count() or 1) if device == "cuda" else 0, progress=False,
                          overwrite=True, save_every=0, **mode)
        t0 = time.perf_counter()
        try:
            train(cfg)
        except torch.OutOfMemoryError as e:  # too big: try the next batch size
            last_err = f"OOM at batch {bs}: {str(e).splitlines()[0][:80]}"
            continue
        import json

        st = [json.loads(x) for x in open(Path(cfg.out) / "train_log.jsonl")]
        st = [r for r in st if r["type"] == "step"]
        a, b = st[min(1, len(st) - 2)], st[-1]
        s_step = (b["seconds"] - a["seconds"]) / max(1, b["step"] - a["step"])
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        return {"batch": bs, "s_per_step": s_step, "img_s": bs / s_step, "peak_gib": peak, "wall_s": time.perf_counter() - t0}
    return {"error": last_err or "no batch size fitted"}


def faiss_gpu(n: int, d: int, q: int, k: int) -> tuple[str, str]:
    try:
        import faiss
    except ImportError:
        return "not run", "faiss not installed"
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return "not run", "this faiss has no GPU support (faiss-cpu); install faiss-gpu to measure"
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[:q] + 0.01
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, d)
    index.add(xb)
    index.search(xq[:100], k)
    t0 = time.perf_counter()
    index.search(xq, k)
    dt = time.perf_counter() - t0
    return f"{q / dt:,.0f} queries/s", f"flat IP, {n:,}×{d} gallery, k={k}"


def head_rates(device: str, n: int, dim: int, out: Path) -> list[tuple[str, str, str, str]]:
    """Training (one epoch, validation included) and prediction rates of both heads on ``n`` random
    ``dim``-d embeddings at random places (the rates do not depend on what the embeddings mean)."""
    import numpy as np
    import pandas as pd

    from geosolver.geo import random_points_on_sphere
    from geosolver.heads import HeadConfig, load_head, train_head
    from geosolver.store import write_store

    rng = np.random.default_rng(0)
    lat, lon = random_points_on_sphere(n, rng)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    store = write_store(out / "head_store", emb, pd.DataFrame({"id": [f"r{i}" for i in range(n)], "lat": lat, "lon": lon}),
                        {"name": "random", "dim": dim})
    rows = []
    for kind in ("cells", "flow"):
        cfg = HeadConfig(gallery=str(store.path), kind=kind, out=str(out / f"head-{kind}"), epochs=1, batch_size=4096 if device != "cpu" else 256,
                         device=device, max_per_cell=max(20, n // 2000), max_val=2000 if device != "cpu" else 100, save_every=10**9)
        r = train_head(cfg, progress=False)
        head = load_head(cfg.out, device=device)
        q = emb[: min(n, 20000 if kind == "cells" else 2000 if device != "cpu" else 50)]  # a flow guess costs samples × steps × 2 passes
        t = time.perf_counter()
        head.predict(q)
        pred = len(q) / (time.perf_counter() - t)
        rows.append((f"head {kind}", f"{n:,} × {dim}-d, batch {cfg.batch_size}", f"train {r.rate:,.0f} emb/s, predict {pred:,.0f} emb/s ({len(q):,} queries)",
                     f"one epoch (validation of {r.n_val} not counted)" + (f"; {cfg.samples} samples × {cfg.ode_steps} midpoint steps" if kind == "flow" else "")))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run every section tiny on the CPU")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--images", type=int, default=1024, help="JPEGs for end-to-end (default 1024)")
    ap.add_argument("--batch", type=int, default=128, help="embedding batch (default 128)")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1), help="DataLoader workers for embed")
    ap.add_argument("--train-steps", type=int, default=8)
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("gpu_check: no CUDA device here; nothing measured (use --cpu-smoke to exercise the code paths on the CPU)")
        return 0
    smoke = not cuda or args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    t_start = time.time()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    vision = TINY_VISION if smoke else VIT_L14_336
    n_img = 24 if smoke else args.images
    batch = 8 if smoke else args.batch
    workers = 0 if smoke else args.workers
    rows: list[tuple[str, str, str, str]] = []
    name = "cpu (smoke: tiny CLIP)" if smoke else torch.cuda.get_device_name(0)

    # matmul
    mm = matmul_tflops(device, torch.bfloat16 if not smoke else torch.float32, 512 if smoke else 8192, 1.0 if smoke else 10.0)
    rows.append(("matmul", "bf16" if not smoke else "fp32 (smoke)", f"{mm:.3g} TFLOP/s", "torch.matmul loop, measured"))

    # embed
    clip_dir = save_random_clip(work / "clip", vision, 16 if smoke else 768)
    paths = make_jpegs(work / "jpegs", n_img, 512, 384)
    flops = vit_flops_per_image(vision)
    from geosolver.encoders import load_encoder

    for prec in (("fp32",) if smoke else ("bf16", "fp16")):
        enc = load_encoder(str(clip_dir), device=device, precision=prec)
        side = vision["image_size"]
        mo = model_only_rate(enc, batch, side, 1.0 if smoke else 15.0, device)
        e2e = end_to_end_rate(enc, paths, batch, workers, work / f"stores-{prec}")
        frac = mo * flops / (mm * 1e12) if mm > 0 else float("nan")
        rows.append((f"embed {prec}", "model-only", f"{mo:,.1f} img/s", f"{frac:.0%} of the matmul rate"))
        ok = e2e >= 0.8 * mo
        rows.append((f"embed {prec}", f"end-to-end ({workers} workers, batch {batch})", f"{e2e:,.1f} img/s",
                     f"{e2e / mo:.0%} of model-only ({'meets' if ok else 'BELOW'} the 80 % target)"))
        del enc
        if cuda:
            torch.cuda.empty_cache()

    # train
    csv = make_images(work / "train_images", 64 if smoke else 1024, 48 if smoke else 384)
    train_model = str(clip_dir)
    batches = [8] if smoke else [256, 128, 64, 32]
    for label, mode in (("lora r=8", dict(train="lora", lr=1e-4)), ("last-blocks 2", dict(train="last-blocks", blocks=2, lr=2e-5))):
        r = train_rate(train_model, csv, mode, batches, 3 if smoke else args.train_steps, device, work / "train")
        if "error" in r:
            rows.append((f"train {label}", "-", "not run", r["error"]))
        else:
            rows.append((f"train {label}", f"batch {r['batch']} (largest that fits of {batches})",
                         f"{r['img_s']:,.1f} img/s ({r['s_per_step']:.2f} s/step)",
                         "peak " + (f"{r['peak_gib']:.1f} GiB" if not math.isnan(r["peak_gib"]) else "n/a on CPU")))

    # faiss
    value, note = faiss_gpu(*((1000, 64, 100, 10) if smoke else (1_000_000, 768, 10_000, 50)))
    rows.append(("faiss GPU search", "-", value, note))

    # location heads
    try:
        rows += head_rates(device, 2000 if smoke else 200_000, 32 if smoke else 768, work)
    except Exception as e:  # report and go on: the other sections' numbers still count
        rows.append(("heads", "-", "not run", f"{type(e).__name__}: {e}"))

    print(f"\n## GPU check — {name}, torch {torch.__version__}, {os.cpu_count()} CPUs, {time.time() - t_start:.0f} s\n")
    print("| section | setting | result | note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if smoke:
        print("\n(CPU smoke run: tiny model and sizes — the numbers say nothing about a GPU.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
