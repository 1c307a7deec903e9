"""The embedding pipeline: failures recorded, resumable after SIGKILL with an identical result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geosolver.cli import main as cli_main
from geosolver.store import EmbeddingStore


def _make_folder_dataset(root: Path, n: int, size=(96, 72), bad: dict[int, str] | None = None) -> Path:
    """n JPEGs with distinct colours + metadata.csv; ``bad`` maps row -> 'corrupt'|'truncated'."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / "img" / f"p{i:04d}.jpg"
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        arr[..., i % 3] = 255 - i % 200
        Image.fromarray(arr).save(p, quality=90)
        kind = (bad or {}).get(i)
        if kind == "corrupt":
            p.write_bytes(b"this is not an image at all")
        elif kind == "truncated":
            p.write_bytes(p.read_bytes()[:200])
        rows.append({"path": f"img/{p.name}", "latitude": -40 + i * 0.5, "longitude": 170 - i * 1.3, "note": f"n{i}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


def _embed_cmd(root, csv, model, out, extra=()):
    return [
        "embed", "--dataset", "folder", "--root", str(root), "--csv", str(csv), "--model", str(model),
        "--out", str(out), "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu", *extra,
    ]


def test_embed_records_failures_and_keeps_metadata(tmp_path, tiny_clip_dir):
    csv = _make_folder_dataset(tmp_path / "ds", 20, bad={3: "corrupt", 11: "truncated"})
    out = tmp_path / "store"
    assert cli_main(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, out, ["--shard-size", "8"])) == 0
    st = EmbeddingStore(out)
    assert len(st) == 18 and st.complete
    assert sorted(st.failures["id"]) == ["p0003", "p0011"]
    assert all(st.failures["reason"].str.len() > 0)
    m = st.metadata
    assert "note" in m.columns and list(m["note"]) == [f"n{i}" for i in range(20) if i not in (3, 11)]
    np.testing.assert_allclose(m["lat"], [-40 + i * 0.5 for i in range(20) if i not in (3, 11)])
    # shards cover fixed input ranges: 8 + 8 + 4 inputs
    assert [s.n_inputs for s in st.shards] == [8, 8, 4]
    assert [s.rows for s in st.shards] == [7, 7, 4]
    norms = np.linalg.norm(st.embeddings(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    # identical images embed identically regardless of batch position: compare with the encoder directly
    from geosolver.encoders import load_encoder

    enc = load_encoder(str(tiny_clip_dir), device="cpu")
    direct = enc.embed_images([str(tmp_path / "ds" / "img" / "p0000.jpg"), str(tmp_path / "ds" / "img" / "p0019.jpg")])
    np.testing.assert_allclose(st.embeddings([0, 17]), direct, atol=3e-3)


def test_resume_refuses_a_different_dataset(tmp_path, tiny_clip_dir):
    csv = _make_folder_dataset(tmp_path / "ds", 6)
    out = tmp_path / "store"
    assert cli_main(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, out, ["--limit", "3"])) == 0
    assert cli_main(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, out)) == 2  # 6 rows now: refused
    assert len(EmbeddingStore(out)) == 3


def test_resume_with_another_tta_suggests_a_new_out(tmp_path, tiny_clip_dir, capsys):
    csv = _make_folder_dataset(tmp_path / "ds", 3)
    out = tmp_path / "store"
    assert cli_main(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, out)) == 0
    capsys.readouterr()
    assert cli_main(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, out, ["--tta", "d4"])) == 2
    err = capsys.readouterr().err
    assert "tta=None, not 'd4'" in err and "new --out" in err


def _run_to_completion(cmd, env):
    return subprocess.run([sys.executable, "-m", "geosolver", *cmd], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_store(tmp_path, tiny_clip_dir):
    n = 240
    csv = _make_folder_dataset(tmp_path / "ds", n, size=(640, 480), bad={5: "corrupt", 130: "truncated"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    extra = ["--shard-size", "16"]
    r = _run_to_completion(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, ref, extra), env)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen([sys.executable, "-m", "geosolver", *_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, killed, extra)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "manifest.json"
    deadline = time.time() + 240
    shards_at_kill = None
    while time.time() < deadline and proc.poll() is None:
        try:
            m = json.loads(manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            m = None
        if m and len(m["shards"]) >= 3 and not m["complete"]:
            time.sleep(0.05)  # land somewhere inside the next shard
            proc.send_signal(signal.SIGKILL)
            shards_at_kill = len(m["shards"])
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert shards_at_kill is not None and proc.returncode == -signal.SIGKILL, "run finished before it could be killed"
    partial = json.loads(manifest.read_text())
    assert not partial["complete"] and partial["n_inputs"] < n

    r = _run_to_completion(_embed_cmd(tmp_path / "ds", csv, tiny_clip_dir, killed, extra), env)
    assert r.returncode == 0, r.stderr
    a, b = EmbeddingStore(ref), EmbeddingStore(killed)
    assert [s.__dict__ for s in a.shards] == [s.__dict__ for s in b.shards]  # names, rows, inputs, checksums
    for s in a.shards:
        assert (ref / f"{s.name}.npy").read_bytes() == (killed / f"{s.name}.npy").read_bytes()
    pd.testing.assert_frame_equal(a.metadata, b.metadata)
    pd.testing.assert_frame_equal(a.failures, b.failures)
    assert len(b) == n - 2 and b.metadata["id"].is_unique
    assert sorted(os.listdir(ref)) == sorted(os.listdir(killed))


def test_default_num_workers_by_device_and_role(monkeypatch):
    from geosolver.embed.decode import default_num_workers

    for cores, embed_cpu, embed_gpu, train_cpu, train_gpu in [(1, 1, 1, 0, 1), (2, 1, 1, 1, 1), (8, 4, 7, 2, 7), (64, 4, 16, 2, 8)]:
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        got = (default_num_workers("cpu"), default_num_workers("cuda"),
               default_num_workers("cpu", training=True), default_num_workers("cuda", training=True))
        assert got == (embed_cpu, embed_gpu, train_cpu, train_gpu), cores
