"""A killed `geosolver train` resumes: OUT/checkpoint.pt every --save-every steps, and the same
command run again in the same --out ends with the same weights as a run that was never stopped.

Also what `train` may write into --out: another run's settings or a folder train did not write
are refused with one line (exit 2) unless --overwrite, and only train's own files are removed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import make_folder_dataset
from PIL import Image

from geosolver.cli import main as cli_main
from geosolver.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """48 PNGs with coordinates (``helpers_data``), each image's left quarter inverted so that a
    horizontal flip changes it (a resumed run must replay the same flips); returns ``(root, csv)``."""
    root = tmp_path_factory.mktemp("resume_data")
    for f in make_folder_dataset(root, n=48, lat_name="lat", lon_name="lon", size=(24, 24))["file"]:
        px = np.asarray(Image.open(f).convert("RGB")).copy()
        px[:, :6] = 255 - px[:, :6]
        Image.fromarray(px).save(f)
    return root, root / "metadata.csv"


def _argv(dataset, clip, out, *extra) -> list[str]:
    root, csv = dataset
    return ["train", "--root", str(root), "--csv", str(csv), "--model", str(clip), "--out", str(out),
            "--device", "cpu", "--num-workers", "0", "--no-progress", "--batch-size", "8", "--group-size", "2",
            "--val-fraction", "0.25", "--val-gallery", "24", "--w-distill", "0.1", "--curve-sample", "24", "--collapse-max-cosine", "0.99", *extra]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _log(out: Path) -> list[dict]:
    """train_log.jsonl without the wall-clock field."""
    recs = [json.loads(line) for line in open(out / "train_log.jsonl")]
    for r in recs:
        r.pop("seconds", None)
    return recs


def _steps_logged(out: Path) -> int:
    try:
        return (out / "train_log.jsonl").read_bytes().count(b'"type": "step"')
    except OSError:
        return 0


def _checkpoint_step(out: Path) -> int:
    return int(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])


# ----------------------------------------------------------------------------------------------
# a real SIGKILL
# ----------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "geosolver", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_weights(tmp_path, dataset, tiny_clip_dir):
    """Killed (SIGKILL) a few steps after its first checkpoint, run again: the same weights, bit for bit,
    and the same log as an uninterrupted run. Images decoded per batch (no cache): the sampler's
    position, the flips' generator, AdamW and the warm-up/cosine schedule must all resume."""
    steps = 40
    extra = ("--train", "last-blocks", "1", "--steps", str(steps), "--save-every", "6", "--eval-every", "5",
             "--warmup-steps", "8", "--lr", "5e-3")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    p = _cli(_argv(dataset, tiny_clip_dir, whole, *extra))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    p = _cli(_argv(dataset, tiny_clip_dir, killed, *extra))
    deadline = time.time() + 300
    while _steps_logged(killed) < 9 and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)  # killed between checkpoints: after the one of step 6, before the next (12)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    at = _checkpoint_step(killed)
    logged = _steps_logged(killed)
    assert 0 < at < steps and logged >= at and not (killed / "model").exists(), (at, logged)

    p = _cli(_argv(dataset, tiny_clip_dir, killed, *extra))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert f"resumed at step {at}" in p.stdout.read()
    print(f"killed after step {logged} (checkpoint at step {at}) of {steps}; max |w - w_uninterrupted| = "
          f"{_max_abs_diff(_weights(killed / 'model'), _weights(whole / 'model')):.3g}")
    assert _max_abs_diff(_weights(killed / "model"), _weights(whole / "model")) == 0.0
    assert _log(killed) == _log(whole)  # each step once, the same losses and validations
    assert [r["step"] for r in _log(killed) if r["type"] == "step"] == list(range(1, steps + 1))
    res_k, res_w = (json.loads((d / "config.json").read_text())["result"] for d in (killed, whole))
    assert (res_k["steps_done"], res_k["best_step"], res_k["best_metrics"]) == (res_w["steps_done"], res_w["best_step"], res_w["best_metrics"])


# ----------------------------------------------------------------------------------------------
# every input path, stopped in-process at a given step
# ----------------------------------------------------------------------------------------------
class Stop(Exception):
    """Stands for the kill: raised by the loss after ``n`` steps."""


def _stop_after(monkeypatch, n: int) -> None:
    from geosolver.train import loop

    real, calls = loop.combined_loss, []

    def loss(*a, **kw):
        calls.append(1)
        if len(calls) > n:
            raise Stop
        return real(*a, **kw)

    monkeypatch.setattr(loop, "combined_loss", loss)


def _cfg(tmp_path, dataset, clip, name, **kw) -> TrainConfig:
    root, csv = dataset
    base = dict(out=str(tmp_path / name), root=str(root), csv=str(csv), model=str(clip), steps=10, batch_size=8,
                group_size=2, lr=5e-3, warmup_steps=0, eval_every=3, save_every=4, device="cpu", num_workers=0,
                val_fraction=0.25, val_gallery=24, curve_sample=24, collapse_max_cosine=0.99, progress=False)
    base.update(kw)
    return TrainConfig(**base)


RESUME_CASES = {
    # stopped in the warm-up (6 steps), after the checkpoint of step 4, mid-epoch (36 rows / 8 = 4 batches an epoch)
    "pixel cache, in warm-up": dict(train="last-blocks", blocks=1, cache_images=True, warmup_steps=6, stop=5),
    # the trunk cache with mirrored images, stopped right after an epoch boundary (step 8 = 2 epochs)
    "trunk cache": dict(train="last-blocks", blocks=1, cache_trunk=True, w_distill=0.5, stop=9, save_every=4),
    # LoRA adapters (their random init is in the checkpoint), soft-contrastive
    "lora": dict(train="lora", lora_r=2, cache_images=True, objective="soft-contrastive", stop=7, save_every=2),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_a_run_stopped_midway_resumes_to_the_same_weights(case, tmp_path, dataset, tiny_clip_dir, monkeypatch):
    kw = dict(RESUME_CASES[case])
    stop = kw.pop("stop")
    whole = train(_cfg(tmp_path, dataset, tiny_clip_dir, "whole", **kw))
    cfg = _cfg(tmp_path, dataset, tiny_clip_dir, "stopped", **kw)
    with monkeypatch.context() as m:
        _stop_after(m, stop)
        with pytest.raises(Stop):
            train(cfg)
    at = _checkpoint_step(Path(cfg.out))
    assert at == stop // cfg.save_every * cfg.save_every and at < stop  # the steps after it are lost and redone
    import tqdm.auto

    bars, real_tqdm = [], tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **kw: (bars.append(kw), real_tqdm(*a, **kw))[1])
    res = train(cfg)
    assert [(b["total"], b["initial"]) for b in bars if b.get("desc", "").startswith("train")] == [(10, at)]  # the bar starts at the resumed step
    assert res.resumed_at == at and res.steps == whole.steps == 10
    assert _max_abs_diff(_weights(res.model_dir), _weights(whole.model_dir)) == 0.0
    assert _log(res.out) == _log(whole.out)
    assert res.best_step == whole.best_step and res.best_metrics == whole.best_metrics


def test_a_finished_run_run_again_trains_no_step_and_writes_the_same_model(tmp_path, dataset, tiny_clip_dir, capsys):
    out = tmp_path / "run"
    argv = _argv(dataset, tiny_clip_dir, out, "--train", "projection", "--steps", "5", "--save-every", "2", "--cache-images")
    assert cli_main(argv) == 0
    first = _weights(out / "model")
    log_before = (out / "train_log.jsonl").read_bytes()
    assert _checkpoint_step(out) == 5  # the last step is saved too
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "resumed at step 5" in capsys.readouterr().out
    assert _max_abs_diff(_weights(out / "model"), first) == 0.0
    assert (out / "train_log.jsonl").read_bytes().count(b'"type": "step"') == log_before.count(b'"type": "step"') == 5


def test_save_every_zero_writes_no_checkpoint(tmp_path, dataset, tiny_clip_dir):
    res = train(_cfg(tmp_path, dataset, tiny_clip_dir, "run", train="projection", steps=3, save_every=0, cache_images=True))
    assert res.steps == 3 and not (res.out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------
# what --out may be
# ----------------------------------------------------------------------------------------------
def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    """The error line (stderr may also hold transformers' own "Loading weights" bar)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("geosolver train: error: ") and "Traceback" not in err, err
    return lines[0]


def test_other_settings_in_a_run_folder_are_refused_naming_them(tmp_path, dataset, tiny_clip_dir, capsys):
    out = tmp_path / "run"
    base = ("--train", "projection", "--steps", "3", "--save-every", "2", "--cache-images")
    assert cli_main(_argv(dataset, tiny_clip_dir, out, *base)) == 0
    (out / "notes.txt").write_text("mine")
    before = _digest(out)
    capsys.readouterr()
    rc = cli_main(_argv(dataset, tiny_clip_dir, out, *base, "--steps", "4", "--lr", "0.01"))
    err = _one_line_error(capsys)
    assert rc == 2 and str(out) in err and "--steps (recorded 3, now 4)" in err and "--lr (recorded null, now 0.01)" in err, err
    assert "--seed" not in err and "--save-every" not in err and "--overwrite" in err
    assert _digest(out) == before  # nothing touched
    # settings that do not change what is computed may differ: this is the same run, resumed
    assert cli_main(_argv(dataset, tiny_clip_dir, out, *base, "--save-every", "5", "--num-workers", "1")) == 0
    # --overwrite starts over: the old run's files are replaced, the user's file stays
    capsys.readouterr()
    assert cli_main(_argv(dataset, tiny_clip_dir, out, *base, "--steps", "4", "--overwrite")) == 0
    assert "resumed" not in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine" and _checkpoint_step(out) == 4
    assert json.loads((out / "config.json").read_text())["result"]["steps_done"] == 4


@pytest.mark.parametrize("kind", ["user files", "another command", "a file"])
def test_an_out_that_is_not_a_training_run_is_refused(kind, tmp_path, dataset, tiny_clip_dir, capsys):
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"\xff\xd8 mine")
        if kind == "another command":
            (out / "config.json").write_text(json.dumps({"command": "evaluate", "k": [1, 10]}))
    before = out.read_bytes() if kind == "a file" else _digest(out)
    rc = cli_main(_argv(dataset, tiny_clip_dir, out, "--steps", "2"))
    err = _one_line_error(capsys)
    assert rc == 2 and str(out) in err, err
    assert ("is a file" in err) if kind == "a file" else ("not a training run's folder" in err and "holiday.jpg" in err), err
    assert (out.read_bytes() if kind == "a file" else _digest(out)) == before


def test_overwrite_writes_into_a_foreign_folder_and_removes_nothing(tmp_path, dataset, tiny_clip_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 mine")
    (out / "checkpoint.pt").write_bytes(b"the user's own file of that name")
    res = train(_cfg(tmp_path, dataset, tiny_clip_dir, "out", train="projection", steps=2, save_every=0, cache_images=True, overwrite=True))
    assert res.steps == 2 and (out / "model" / "model.safetensors").is_file()
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8 mine"
    assert (out / "checkpoint.pt").read_bytes() == b"the user's own file of that name"  # save_every 0: never written


def test_a_damaged_checkpoint_is_one_line(tmp_path, dataset, tiny_clip_dir, capsys):
    out = tmp_path / "run"
    argv = _argv(dataset, tiny_clip_dir, out, "--train", "projection", "--steps", "3", "--save-every", "2", "--cache-images")
    assert cli_main(argv) == 0
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:100])
    stale = out / "checkpoint.pt.tmp4242"  # a write killed half-way
    stale.write_bytes(b"half")
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = _one_line_error(capsys)
    assert "cannot read the checkpoint" in err and "--overwrite" in err, err
    assert not stale.exists()  # train's own temporary is cleared


def test_a_checkpoint_of_a_changed_dataset_is_refused(tmp_path, tiny_clip_dir, capsys):
    root = tmp_path / "data"
    make_folder_dataset(root, n=48, lat_name="lat", lon_name="lon", size=(24, 24))
    out = tmp_path / "run"
    argv = _argv((root, root / "metadata.csv"), tiny_clip_dir, out, "--train", "projection", "--steps", "3",
                 "--save-every", "2", "--cache-images", "--val-fraction", "0")
    assert cli_main(argv) == 0
    lines = (root / "metadata.csv").read_text().splitlines()
    (root / "metadata.csv").write_text("\n".join(lines[:41]) + "\n")  # 40 of the 48 rows, same file
    capsys.readouterr()
    rc = cli_main(argv)
    err = _one_line_error(capsys)
    assert rc == 2 and "dataset changed" in err and "48 training rows then, 40 now" in err, err
    assert _checkpoint_step(out) == 3
