"""Hostile model choices: a hub that cannot be reached, a model path that is wrong. Each ends in one
line naming the model (exit code 2 on the command line) within seconds, never a traceback or a
minute of retry warnings."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main as cli_main
from geosolver.encoders import EncoderError, load_encoder
from geosolver.store import write_store

from helpers_data import make_folder_dataset

FAST_S = 15  # a generous bound: an unreachable hub is reported after one short probe, not ~50 s of retries


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Online mode (HF_HUB_OFFLINE unset) with the hub endpoint on a closed local port and an empty
    hub cache. huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE at import time into
    ``huggingface_hub.constants``, so those constants are patched too."""
    import huggingface_hub.constants as hc

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "ENDPOINT", endpoint)
    monkeypatch.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    return {"endpoint": endpoint, "cache": cache}


def _fake_cached_model(cache: Path, repo: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A tiny CLIP laid out as the hub cache holds a downloaded repo:
    ``models--org--name/refs/main`` (the commit) and ``snapshots/<commit>/`` (the files)."""
    from conftest import build_tiny_clip

    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    build_tiny_clip(snap)
    return snap


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err and "Retrying" not in err
    return lines[0]


# ============================================================================ hub unreachable
def test_default_model_without_a_hub_fails_fast_with_one_line(no_hub, capfd):
    t0 = time.monotonic()
    with pytest.raises(EncoderError) as e:
        load_encoder("streetclip", device="cpu")
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    assert "\n" not in msg
    for fragment in ("streetclip", "geolocal/StreetCLIP", "unreachable", no_hub["endpoint"], "HF_HUB_OFFLINE=1",
                     "--local-dir DIR", "--model DIR", "histogram", "efficientnet-lite0@S"):
        assert fragment in msg, (fragment, msg)
    assert "Retrying" not in capfd.readouterr().err  # no huggingface_hub retry chatter


def test_embed_cli_default_model_without_a_hub_exits_2_with_one_line(no_hub, tmp_path, capfd):
    make_folder_dataset(tmp_path / "ds", n=2)
    capfd.readouterr()
    t0 = time.monotonic()
    rc = cli_main(["embed", "--root", str(tmp_path / "ds"), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    elapsed = time.monotonic() - t0
    line = _one_line(capfd.readouterr().err)
    assert rc == 2 and elapsed < FAST_S, (rc, elapsed)
    assert line.startswith("geosolver embed: error:") and "geolocal/StreetCLIP" in line and "unreachable" in line


def test_a_cached_hub_model_loads_when_the_hub_is_unreachable(no_hub):
    snap = _fake_cached_model(no_hub["cache"], "geolocal/StreetCLIP")
    t0 = time.monotonic()
    enc = load_encoder("streetclip", device="cpu")
    assert time.monotonic() - t0 < FAST_S
    assert enc.dim == 16 and enc.name == "geolocal/StreetCLIP"
    from PIL import Image

    img = Image.new("RGB", (40, 40), (120, 30, 200))
    emb = enc.embed_images([img])
    assert emb.shape == (1, 16)
    assert np.abs(emb - load_encoder(str(snap), device="cpu").embed_images([img])).max() < 1e-6  # the cached weights
    assert enc.tokenizer is not None  # the tokenizer also comes from the cache


def test_offline_mode_and_not_cached_says_so_in_one_line(no_hub, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(EncoderError) as e:
        load_encoder("clip-vit-b-32", device="cpu")
    msg = str(e.value)
    assert time.monotonic() - t0 < FAST_S and "\n" not in msg
    for fragment in ("clip-vit-b-32", "openai/clip-vit-base-patch32", "HF_HUB_OFFLINE", "not in the local cache",
                     str(no_hub["cache"]), "--model DIR", "histogram"):
        assert fragment in msg, (fragment, msg)


# ============================================================================ wrong model paths, on the command line
def _gallery(path):
    from geosolver.encoders import load_encoder as _load

    enc = _load("histogram")
    meta = pd.DataFrame({"id": ["a", "b", "c"], "lat": [0.0, 10.0, 20.0], "lon": [0.0, 10.0, 20.0]})
    return write_store(path, np.random.default_rng(0).standard_normal((3, enc.dim)).astype(np.float32), meta, enc.identity())


def _bad_model(kind: str, tmp_path: Path) -> str:
    if kind == "nonexistent":
        return str(tmp_path / "nonexistent")
    if kind == "file":
        f = tmp_path / "model.bin"
        f.write_bytes(b"\0" * 16)
        return str(f)
    if kind == "no-config":
        d = tmp_path / "model-dir"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 16)
        return str(d)
    if kind == "config-without-weights":
        import json

        d = tmp_path / "clip-dir"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "clip"}))
        return str(d)
    raise AssertionError(kind)


BAD_MODELS = ["nonexistent", "file", "no-config", "config-without-weights"]


@pytest.mark.parametrize("kind", BAD_MODELS)
@pytest.mark.parametrize("command", ["embed", "locate"])
def test_wrong_model_path_on_the_command_line_exits_2_with_one_line(command, kind, tmp_path, capfd):
    model = _bad_model(kind, tmp_path)
    if command == "embed":
        make_folder_dataset(tmp_path / "ds", n=2)
        argv = ["embed", "--root", str(tmp_path / "ds"), "--out", str(tmp_path / "out"), "--no-progress", "--model", model]
    else:
        _gallery(tmp_path / "g")
        from PIL import Image

        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "p.png")
        argv = ["locate", str(tmp_path / "p.png"), "--gallery", str(tmp_path / "g"), "--model", model]
    capfd.readouterr()
    rc = cli_main(argv)
    line = _one_line(capfd.readouterr().err)
    assert rc == 2
    assert line.startswith(f"geosolver {command}: error:") and model in line, line


def test_unknown_name_lists_the_native_size_form(tmp_path):
    with pytest.raises(EncoderError) as e:
        load_encoder(str(tmp_path / "nonexistent"))
    assert "efficientnet-lite0@S" in str(e.value) and "histogram" in str(e.value)
