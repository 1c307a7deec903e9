"""Embedding throughput benchmarks.

Sections (run all with no arguments, or pick with ``--sections``):

* ``preprocess`` — decode + preprocess images/s in ONE process (= per DataLoader worker) at
  StreetCLIP's 336 px configuration: Geosolver's path (``images.open_image(min_side=...)`` with JPEG
  draft decoding + numpy ``ResizeCropNormalize``) against the reference path (``PIL.Image.open`` +
  ``CLIPImageProcessor``, PIL backend). No model weights are needed.

* ``end_to_end`` — ``embed()`` vs a naive per-image loop (open, ``CLIPProcessor``, one model
  call each), same random ViT-B/32-sized CLIP on the CPU.
* ``gpu`` — ViT-L/14-336 (StreetCLIP's architecture, random weights) on CUDA: model-only vs
  end-to-end images/s in fp16 and bf16 (skipped without a GPU).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/embed_throughput.py --n 200 --sizes 512x384 2048x1536
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

STREETCLIP_PROCESSOR = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}


def make_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """Write ``n`` photo-like JPEGs (smooth colour fields + noise, quality 90) of ``width x height``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        f = rng.uniform(20, 120, 3)
        base = np.stack([np.sin(xx / f[c] + i) * np.cos(yy / f[(c + 1) % 3]) for c in range(3)], -1) * 90 + 128
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def _rate(fn: Callable[[str], np.ndarray], paths: list[str], repeats: int) -> tuple[float, float, np.ndarray]:
    """Best-of-``repeats`` images/s of ``fn`` over ``paths`` by wall clock and by this process's
    CPU time (the stabler number on a shared machine), and the last output (for checks)."""
    fn(paths[0])  # warm-up (imports, caches)
    best_wall = best_cpu = 0.0
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            out = fn(p)
        best_wall = max(best_wall, len(paths) / (time.perf_counter() - t0))
        best_cpu = max(best_cpu, len(paths) / max(time.process_time() - c0, 1e-9))
    return best_wall, best_cpu, out


def preprocess_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Single-process decode+preprocess throughput, ours vs ``CLIPImageProcessor``."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from geosolver.encoders.preprocess import ResizeCropNormalize
    from geosolver.images import open_image

    hf = CLIPImageProcessorPil(**STREETCLIP_PROCESSOR)
    ours = ResizeCropNormalize.from_processor_config(hf.to_dict())

    def reference(p: str) -> np.ndarray:
        with Image.open(p) as im:
            return hf(images=im.convert("RGB"), return_tensors="np")["pixel_values"][0]

    def geosolver_full(p: str) -> np.ndarray:
        return ours(open_image(p))

    def geosolver_draft(p: str) -> np.ndarray:
        return ours(open_image(p, min_side=ours.min_side))

    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        paths = make_jpegs(workdir / size, args.n, w, h)
        wall_ref, cpu_ref, out_ref = _rate(reference, paths, args.repeats)
        for name, fn in [
            ("PIL open + CLIPImageProcessor", reference),
            ("open_image + ResizeCropNormalize", geosolver_full),
            ("open_image(min_side) + ResizeCropNormalize", geosolver_draft),
        ]:
            wall, cpu, out = (wall_ref, cpu_ref, out_ref) if fn is reference else _rate(fn, paths, args.repeats)
            rows.append({
                "section": "preprocess", "input": f"{w}x{h} JPEG", "method": name,
                "img/s (wall)": round(wall, 1), "img/CPU-s": round(cpu, 1), "speedup (CPU)": round(cpu / cpu_ref, 2),
                "max|diff| vs ref": float(np.abs(out - out_ref).max()),
            })
    return rows


# ----------------------------------------------------------------------------- end to end
VIT_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224)
VIT_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=336)


def save_random_clip(path: Path, vision: dict, projection_dim: int) -> Path:
    """A randomly initialised CLIP with the given vision tower (a tiny text tower), saved with
    ``save_pretrained`` + its image processor: same compute as the real weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=1000, max_position_embeddings=77)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    CLIPModel(cfg).save_pretrained(path)
    side = vision["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(path)
    return path


def _folder_table(paths: list[str]):
    import pandas as pd

    return pd.DataFrame({"id": [Path(p).stem for p in paths], "source": paths, "lat": 0.0, "lon": 0.0})


def end_to_end_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """``embed()`` (workers decode + preprocess, batched model calls under inference_mode)
    against a naive loop (open, ``CLIPProcessor``, one model call per image under ``no_grad``),
    same random ViT-B/32-sized CLIP, same JPEGs, on the CPU."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    from geosolver.embed import embed
    from geosolver.encoders import load_encoder

    torch.set_num_threads(os.cpu_count() or 1)
    w, h = (int(v) for v in args.sizes[0].split("x"))
    paths = make_jpegs(workdir / f"jpeg-{w}x{h}", args.e2e_n, w, h)
    model_dir = save_random_clip(workdir / "vit-b32-random", VIT_B32, 512)
    rows = []

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPImageProcessor.from_pretrained(model_dir)
    n_naive = min(len(paths), args.naive_n)
    t = time.perf_counter()
    with torch.no_grad():
        for pth in paths[:n_naive]:
            inputs = proc(images=Image.open(pth).convert("RGB"), return_tensors="pt")
            model.get_image_features(**inputs)
    naive = n_naive / (time.perf_counter() - t)
    rows.append({"section": "end_to_end", "model": "ViT-B/32 random, CPU", "method": "naive loop (per image)", "images": n_naive, "img/s": round(naive, 1), "speedup": 1.0})
    del model

    enc = load_encoder(str(model_dir), device="cpu")
    px = torch.randn(args.batch_size, 3, enc.image_size, enc.image_size)
    enc.embed_pixels(px)
    reps = max(2, len(paths) // args.batch_size // 2)
    t = time.perf_counter()
    for _ in range(reps):
        enc.embed_pixels(px)
    ceiling = reps * args.batch_size / (time.perf_counter() - t)
    rows.append({"section": "end_to_end", "model": "ViT-B/32 random, CPU", "method": f"model only, batch {args.batch_size} (ceiling: no decoding)",
                 "images": reps * args.batch_size, "img/s": round(ceiling, 1), "speedup": round(ceiling / naive, 2)})
    for workers in args.workers:
        out = workdir / f"store-w{workers}"
        t = time.perf_counter()
        res = embed(_folder_table(paths), enc, out, batch_size=args.batch_size, num_workers=workers, progress=False)
        rate = len(paths) / (time.perf_counter() - t)
        assert res.failures == 0
        rows.append({"section": "end_to_end", "model": "ViT-B/32 random, CPU", "method": f"geosolver embed(), {workers} worker(s), batch {args.batch_size}",
                     "images": len(paths), "img/s": round(rate, 1), "speedup": round(rate / naive, 2)})
        import shutil

        shutil.rmtree(out)
    return rows


def gpu_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """StreetCLIP's architecture (ViT-L/14-336, random weights: same cost) on CUDA: model-only
    images/s (preprocessed tensors already on the GPU) vs end-to-end ``embed()`` from JPEGs,
    in fp16 and bf16. Skipped without a GPU."""
    import torch

    if not torch.cuda.is_available():
        print("gpu section: no CUDA device, skipped", file=sys.stderr)
        return []
    from geosolver.embed import embed
    from geosolver.encoders import load_encoder

    w, h = (int(v) for v in args.sizes[0].split("x"))
    paths = make_jpegs(workdir / f"jpeg-{w}x{h}", args.gpu_n, w, h)
    model_dir = save_random_clip(workdir / "vit-l14-336-random", VIT_L14_336, 768)
    rows = []
    for precision in ("fp16", "bf16"):
        enc = load_encoder(str(model_dir), device="cuda", precision=precision)
        px = torch.randn(args.gpu_batch, 3, 336, 336, device="cuda")
        for _ in range(3):
            enc.embed_pixels(px)
        torch.cuda.synchronize()
        reps = max(1, args.gpu_n // args.gpu_batch)
        t = time.perf_counter()
        for _ in range(reps):
            enc.embed_pixels(px)
        torch.cuda.synchronize()
        model_only = reps * args.gpu_batch / (time.perf_counter() - t)
        out = workdir / f"gpu-store-{precision}"
        t = time.perf_counter()
        embed(_folder_table(paths), enc, out, batch_size=args.gpu_batch, num_workers=args.gpu_workers, progress=False)
        e2e = len(paths) / (time.perf_counter() - t)
        rows.append({"section": "gpu", "model": f"ViT-L/14-336 random, {torch.cuda.get_device_name()}", "method": f"{precision} model-only",
                     "images": reps * args.gpu_batch, "img/s": round(model_only, 1), "speedup": 1.0})
        rows.append({"section": "gpu", "model": f"ViT-L/14-336 random, {torch.cuda.get_device_name()}",
                     "method": f"{precision} end-to-end embed() ({args.gpu_workers} workers)", "images": len(paths),
                     "img/s": round(e2e, 1), "speedup": round(e2e / model_only, 2)})
        import shutil

        shutil.rmtree(out)
    rows.append({"section": "gpu", "model": "peak CUDA memory", "method": "", "images": "", "img/s": f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", "speedup": ""})
    return rows


#: section name → ``(args, workdir) -> rows``.
SECTIONS: dict[str, Callable[[argparse.Namespace, Path], list[dict]]] = {
    "preprocess": preprocess_section,
    "end_to_end": end_to_end_section,
    "gpu": gpu_section,
}


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 0.1 else str(v)

    table = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(t, widths)) + " |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--n", type=int, default=200, help="images per size (default 200)")
    p.add_argument("--sizes", nargs="+", default=["512x384"], help="JPEG sizes WxH (default 512x384)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats, best kept (default 3)")
    p.add_argument("--workdir", default=None, help="where to write the test JPEGs (default: a temp dir)")
    p.add_argument("--e2e-n", type=int, default=256, help="end_to_end: images for embed() (default 256)")
    p.add_argument("--naive-n", type=int, default=96, help="end_to_end: images for the naive loop (default 96)")
    p.add_argument("--batch-size", type=int, default=32, help="end_to_end: batch size (default 32)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="end_to_end: DataLoader workers to try")
    p.add_argument("--gpu-n", type=int, default=2048, help="gpu: images (default 2048)")
    p.add_argument("--gpu-batch", type=int, default=128, help="gpu: batch size (default 128)")
    p.add_argument("--gpu-workers", type=int, default=12, help="gpu: DataLoader workers (default 12)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sections == ["preprocess"]:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-worker numbers
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        rows: list[dict] = []
        for name in args.sections:
            rows += SECTIONS[name](args, workdir)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
