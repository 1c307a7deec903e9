"""GPU benchmark of `geosolver.train`: speed and memory of each training mode at StreetCLIP's size.

Needs a CUDA GPU (refuses to run without one unless ``--tiny``, a CPU smoke test). The model hub
is not needed: by default a randomly initialised CLIP with StreetCLIP's architecture
(ViT-L/14 at 336 px, 768-d projection) is built and saved locally; ``--model DIR`` uses real
weights (e.g. a ``save_pretrained`` copy of ``geolocal/StreetCLIP``) instead.

For every mode (``projection`` with the trunk cache, ``last-blocks 2``, ``lora``, ``all``,
``all`` + gradient checkpointing) it runs :func:`geosolver.train.train` for ``--steps`` steps on
generated location-dependent images (bf16 autocast, objective ``both`` + distillation), and
reports seconds per step, training images per second, peak GPU memory, the first/last training
losses and the validation Geoscore before/after. Results: ``OUT/train_gpu.json`` and
``OUT/train_gpu.md``.

    python benchmarks/train_gpu.py --out /tmp/train_gpu            # on a GPU machine
    python benchmarks/train_gpu.py --tiny --out /tmp/train_gpu_cpu  # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODES = {
    "projection+trunk-cache": dict(train="projection", cache_trunk=True, lr=1e-3),
    "last-blocks 2": dict(train="last-blocks", blocks=2, lr=2e-5),
    "lora r=8": dict(train="lora", lr=1e-4),
    "all": dict(train="all", lr=1e-5),
    "all + grad. checkpointing": dict(train="all", gradient_checkpointing=True, lr=1e-5),
}


def make_images(root: Path, n: int, side: int, seed: int = 0) -> Path:
    """``n`` JPEGs: colour from the location (16 clusters world-wide, ~50 km spread) plus noise."""
    from PIL import Image
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = np.stack([rng.uniform(-60, 70, 16), rng.uniform(-180, 180, 16)], 1)
    rows = []
    for i in range(n):
        c = i % len(centres)
        la = float(np.clip(centres[c, 0] + rng.normal(0, 0.4), -89, 89))
        lo = float((centres[c, 1] + rng.normal(0, 0.4) + 180) % 360 - 180)
        colour = np.array([(la + 90) / 180, (lo + 180) / 360, (c % 4) / 4]) * 255
        arr = np.clip(colour + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        p = root / f"img{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        rows.append({"path": p.name, "lat": la, "lon": lo})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


def build_clip(path: Path, tiny: bool) -> str:
    """A random CLIP saved with save_pretrained: StreetCLIP's architecture, or a tiny one."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    if tiny:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        proj, size = 16, 32
    else:  # ViT-L/14-336, as geolocal/StreetCLIP (openai/clip-vit-large-patch14-336)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        proj, size = 768, 336
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj))
    model.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="a local CLIP directory (default: random ViT-L/14-336)")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--num-workers", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny CLIP")
    args = ap.parse_args(argv)

    import torch

    from geosolver.train import TrainConfig, train

    if not torch.cuda.is_available() and not args.tiny:
        print("train_gpu.py: no CUDA GPU; run with --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side = 48 if args.tiny else 384
    csv = make_images(out / "images", args.images, side)
    model = args.model or build_clip(out / "clip", args.tiny)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    rows = []
    for name in args.modes:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(
            out=str(out / "runs" / name.replace(" ", "_").replace("+", "").replace("=", "")), root=str(csv.parent), csv=str(csv),
            model=model, objective="both", w_distill=0.1, steps=args.steps, batch_size=args.batch_size, group_size=4,
            eval_every=0, val_fraction=0.1, val_queries=200, val_gallery=512, device=device, precision="auto",
            num_workers=args.num_workers if device == "cuda" else 0, warmup_steps=5, progress=False, overwrite=True, save_every=0, **MODES[name],
        )
        t0 = time.time()
        try:
            res = train(cfg)
        except Exception as e:  # report and go on with the other modes (e.g. out of memory)
            rows.append({"mode": name, "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"{name}: {rows[-1]['error']}", file=sys.stderr)
            continue
        log = [json.loads(line) for line in open(Path(cfg.out) / "train_log.jsonl")]
        st = [r for r in log if r["type"] == "step"]
        # Steady-state speed: from the end of step 5 to the last step (no validation in between).
        a, b = st[min(4, len(st) - 2)], st[-1]
        s_per_step = (b["seconds"] - a["seconds"]) / max(1, b["step"] - a["step"])
        rows.append({
            "mode": name,
            "s_per_step": s_per_step,
            "img_per_s": args.batch_size / s_per_step,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
            "loss_first3": float(np.mean([r["loss"] for r in st[:3]])),
            "loss_last3": float(np.mean([r["loss"] for r in st[-3:]])),
            "geoscore_base": res.initial_metrics.get("geoscore"),
            "geoscore_best": res.best_metrics.get("geoscore"),
            "wall_s": time.time() - t0,
        })
        print(json.dumps(rows[-1]), flush=True)
    info = {"device": gpu, "torch": torch.__version__, "images": args.images, "steps": args.steps, "batch_size": args.batch_size, "model": model}
    (out / "train_gpu.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = [
        f"Training speed on {gpu} (batch {args.batch_size}, bf16 autocast, objective both + distill, {args.steps} steps, {args.images} generated images):",
        "",
        "| mode | s/step | img/s | peak GPU GiB | loss first→last | val Geoscore base→best |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error'][:80]} | | | | |")
        else:
            lines.append(
                f"| {r['mode']} | {r['s_per_step']:.3f} | {r['img_per_s']:.0f} | {r['peak_gpu_gib']:.1f} | "
                f"{r['loss_first3']:.3f}→{r['loss_last3']:.3f} | {r['geoscore_base']:.0f}→{r['geoscore_best']:.0f} |"
            )
    (out / "train_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
