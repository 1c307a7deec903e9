"""Embedding throughput benchmarks.

Sections (run all with no arguments, or pick with ``--sections``):

* ``preprocess`` — decode + preprocess images/s in ONE process (= per DataLoader worker) at
  StreetCLIP's 336 px configuration: Geosolver's path (``images.open_image(min_side=...)`` with JPEG
  draft decoding + numpy ``ResizeCropNormalize``) against the reference path (``PIL.Image.open`` +
  ``CLIPImageProcessor``, PIL backend). No model weights are needed.

More sections (e.g. the end-to-end embed pipeline) register themselves in :data:`SECTIONS`: a
function ``(args, workdir) -> list[dict]`` returning table rows.

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


#: section name → ``(args, workdir) -> rows``. Add the end-to-end embed pipeline section here.
SECTIONS: dict[str, Callable[[argparse.Namespace, Path], list[dict]]] = {
    "preprocess": preprocess_section,
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        rows: list[dict] = []
        for name in args.sections:
            rows += SECTIONS[name](args, workdir)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
