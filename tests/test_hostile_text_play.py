"""Hostile input at the three newest entry points: zero-shot geolocation (``locate --zero-shot``), the
text prior fused with the kNN vote (``locate --prior text``, ``evaluate --prior/--zero-shot``) and Play
mode (``serve --play`` and the round routes).

Each case ends in ONE line naming what is wrong and exit code 2 (HTTP: a 4xx/503 whose ``detail`` is
one line), never a traceback; nothing is written (no run directory, no store) and nothing that was
there is lost. A damaged text-embedding cache is recomputed with a warning and gives the same answer;
an unwritable cache costs only the recomputation.

Not repeated here (see tests/test_zeroshot.py, test_prior.py, test_serve_play.py): template errors of
``LabelSet.prompts``, garbage / wrong-shape / NaN cache files, encoders without a text tower for
``locate``, option combinations of ``locate``, missing or foreign ``--play`` stores, bad lat/lon
values and bodies, unknown / used / expired tokens, unreadable photos (503).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from helpers_serve import encode, gallery_coords, pattern, serve_client  # noqa: E402

from geosolver.cli import main as cli_main  # noqa: E402
from geosolver.store import write_store  # noqa: E402

# the tiny CLIP's tokenizer keeps ~30 characters: a short template keeps the country prompts distinct
T_COUNTRY = "{country}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def photo(tmp_path) -> str:
    p = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (120, 160, 60)).save(p)
    return str(p)


def _progress(line: str) -> bool:
    """A progress-bar fragment (transformers' "Loading weights", tqdm), not a message."""
    return "it/s]" in line or "s/it]" in line or "%|" in line


def error_line(err: str, command: str) -> str:
    """The single message line of a failed command (progress-bar fragments aside)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not _progress(ln)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"geosolver {command}: error:"), lines[0]
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# ================================================================================================
# 1. nonsense numbers and names, refused at the parser before any work
# ================================================================================================
_LOC = ["P", "--gallery", "g"]
_ZS = ["P", "--zero-shot", "regions"]
_EV = ["--queries", "q", "--gallery", "g", "--out", "run"]
_SV = ["--gallery", "g", "--play", "q"]
PARSER_CASES = [
    ("locate", _LOC + ["--prior", "text"], "--prior-weight", "-1", "must be a finite number >= 0"),
    ("locate", _LOC + ["--prior", "text"], "--prior-weight", "nan", "must be a finite number >= 0"),
    ("locate", _ZS, "--text-temperature", "0", "must be a finite number > 0"),
    ("locate", _ZS, "--text-temperature", "inf", "must be a finite number > 0"),
    ("locate", _ZS + ["--hierarchical"], "--top-countries", "0", "must be >= 1"),
    ("locate", ["P", "--zero-shot", "cities"], "--min-population", "-5", "must be >= 1"),
    ("locate", ["P"], "--zero-shot", "planets", "invalid choice: 'planets'"),
    ("evaluate", _EV + ["--prior", "text"], "--prior-weight", "0.5,-1", "must be a finite number >= 0"),
    ("evaluate", _EV + ["--prior", "text"], "--prior-weight", "1,nan", "must be a finite number >= 0"),
    ("evaluate", _EV + ["--zero-shot", "countries"], "--text-temperature", "0", "must be a finite number > 0"),
    ("evaluate", _EV, "--prior", "none,bogus", "'bogus' is not one of none, text"),
    ("evaluate", _EV, "--zero-shot", "planets", "invalid choice: 'planets'"),
    ("serve", _SV, "--round-ttl", "0", "must be a finite number > 0"),
    ("serve", _SV, "--round-ttl", "nan", "must be a finite number > 0"),
]


@pytest.mark.parametrize("cmd,base,opt,value,words", PARSER_CASES, ids=[f"{c} {o} {v}" for c, _, o, v, _ in PARSER_CASES])
def test_nonsense_options_are_refused_at_the_parser(cmd, base, opt, value, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main([cmd, *base, opt, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"geosolver {cmd}: error: argument {opt}") and words in last, err
    assert not files_under(tmp_path)  # nothing written (the cache dir included)


# ================================================================================================
# 2. zero-shot on the command line: models, templates, labels
# ================================================================================================
def test_zero_shot_with_a_clip_saved_without_its_tokenizer_exits_2_with_one_line(tiny_clip_dir, tmp_path, photo, capsys, _cache):
    """The weights load, but there is no vocabulary: transformers then builds a tokenizer that maps
    every prompt to the same unknown tokens -- uniform probabilities, a silently useless answer."""
    model = tmp_path / "clip-no-tokenizer"
    shutil.copytree(tiny_clip_dir, model)
    removed = [f for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
               if (model / f).exists()]
    for f in removed:
        (model / f).unlink()
    assert removed
    capsys.readouterr()
    rc = cli_main(["locate", photo, "--zero-shot", "countries", "--model", str(model)])
    line = error_line(capsys.readouterr().err, "locate")
    assert rc == 2 and str(model) in line and "tokenizer" in line and "text tower" in line
    assert not files_under(_cache / "text-embeddings")  # no useless text embeddings were cached


@pytest.mark.parametrize("kind", ["nonexistent", "a-file"])
def test_zero_shot_with_a_wrong_model_path_exits_2_with_one_line(kind, tmp_path, photo, capsys):
    model = tmp_path / "models" / "streetclip-local"
    if kind == "a-file":
        model.parent.mkdir()
        model.write_bytes(b"\0" * 64)
    rc = cli_main(["locate", photo, "--zero-shot", "countries", "--model", str(model)])
    line = error_line(capsys.readouterr().err, "locate")
    assert rc == 2 and str(model) in line


BAD_TEMPLATES = [
    ("countries", "{}", "{}"),
    ("countries", "{foo} in {country}", "{foo}"),
    ("countries", "{country!r}", "no format spec or conversion"),
    ("countries", "{country:>40}", "no format spec or conversion"),
    ("countries", "{city} in {country}", "{city}"),
    ("countries", "", "must contain {country}"),
    ("countries", "A photo in {country", "bad template"),
    ("regions", "A photo in {country}.", "must contain {region}"),
]


@pytest.mark.parametrize("level,template,words", BAD_TEMPLATES, ids=[f"{lv}:{t!r}" for lv, t, _ in BAD_TEMPLATES])
def test_zero_shot_with_a_bad_prompt_template_exits_2_with_one_line(level, template, words, tiny_clip_dir, photo, capsys, _cache):
    rc = cli_main(["locate", photo, "--zero-shot", level, "--model", tiny_clip_dir, "--prompt", template])
    line = error_line(capsys.readouterr().err, "locate")
    assert rc == 2 and words in line, line
    assert not files_under(_cache / "text-embeddings")  # refused before any text embedding


def test_zero_shot_with_a_min_population_no_city_reaches_exits_2_naming_it(tiny_clip_dir, photo, capsys):
    rc = cli_main(["locate", photo, "--zero-shot", "cities", "--min-population", "2000000000", "--model", tiny_clip_dir,
                   "--prompt", "{city}"])
    line = error_line(capsys.readouterr().err, "locate")
    assert rc == 2 and "2,000,000,000" in line and "--min-population" in line


# ================================================================================================
# 3. the text-embedding cache: damaged files are recomputed, an unwritable cache is only slower
# ================================================================================================
@pytest.fixture(scope="module")
def enc(tiny_clip_dir):
    from geosolver.encoders import load_encoder

    return load_encoder(tiny_clip_dir, device="cpu")


@pytest.mark.parametrize("damage", ["truncated", "pickled-object", "directory", "unnormalised"])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning(damage, enc, _cache, caplog):
    from geosolver.zeroshot import label_set, text_embeddings

    labels = label_set("countries").subset(np.arange(25))
    clean = text_embeddings(enc, labels, T_COUNTRY)
    (path,) = (_cache / "text-embeddings").glob("countries-*.npy")
    if damage == "truncated":  # a copy cut short (disk full, a killed rsync)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "pickled-object":  # never unpickled: allow_pickle=False
        np.save(path, np.array([{"evil": 1}] * len(labels), dtype=object), allow_pickle=True)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        np.save(path, clean * 3.0)
    with caplog.at_level(logging.WARNING, logger="geosolver.zeroshot"):
        again = text_embeddings(enc, labels, T_COUNTRY)
    assert np.allclose(again, clean, atol=1e-6)
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING), caplog.text


def _zero_shot_json(tiny_clip_dir, photo, capsys) -> tuple[int, dict]:
    rc = cli_main(["locate", photo, "--zero-shot", "countries", "--model", tiny_clip_dir, "--prompt", T_COUNTRY, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_locate_zero_shot_over_a_truncated_cache_gives_the_same_answer(tiny_clip_dir, photo, capsys, _cache, caplog):
    rc, clean = _zero_shot_json(tiny_clip_dir, photo, capsys)
    assert rc == 0
    (path,) = (_cache / "text-embeddings").glob("countries-*.npy")
    path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="geosolver.zeroshot"):
        rc, again = _zero_shot_json(tiny_clip_dir, photo, capsys)
    assert rc == 0 and again == clean
    assert "recomputing" in caplog.text
    assert path.stat().st_size > 200 and np.isfinite(np.load(path)).all()  # rewritten whole


@pytest.mark.parametrize("where", ["cache-dir-is-a-file", "text-embeddings-is-a-file"])
def test_an_unwritable_cache_only_costs_the_recomputation(where, tiny_clip_dir, photo, capsys, tmp_path, monkeypatch, caplog):
    """A user would expect the answer anyway: the text embeddings are computed and not kept."""
    rc, clean = _zero_shot_json(tiny_clip_dir, photo, capsys)  # into the writable default cache
    assert rc == 0
    blocked = tmp_path / "blocked-cache"
    if where == "cache-dir-is-a-file":
        blocked.write_text("not a directory")
    else:
        blocked.mkdir()
        (blocked / "text-embeddings").write_text("not a directory")
    before = files_under(blocked)
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING, logger="geosolver.zeroshot"):
        rc, again = _zero_shot_json(tiny_clip_dir, photo, capsys)
    assert rc == 0 and again == clean
    assert "could not write text-embedding cache" in caplog.text
    assert files_under(blocked) == before


# ================================================================================================
# 4. evaluate with a text model that is not there
# ================================================================================================
def _clip_store(path: Path, enc, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, enc.dim)).astype(np.float32)
    lat, lon = rng.uniform(-50, 60, n), rng.uniform(-120, 140, n)
    meta = pd.DataFrame({"id": [f"{path.name}{i}" for i in range(n)], "lat": lat, "lon": lon})
    write_store(path, emb, meta, enc.identity())
    return path


def test_evaluate_zero_shot_with_a_gallery_of_an_encoder_without_a_text_tower(tmp_path, capsys):
    from geosolver.encoders import load_encoder

    enc = load_encoder("histogram")
    _clip_store(tmp_path / "g", enc, 6, 0)
    _clip_store(tmp_path / "q", enc, 3, 1)
    before = files_under(tmp_path)
    rc = cli_main(["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), "--zero-shot", "countries",
                   "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "run")])
    line = error_line(capsys.readouterr().err, "evaluate")
    assert rc == 2 and "text tower" in line and "histogram" in line
    assert files_under(tmp_path) == before  # no run dir


def test_evaluate_prior_text_when_the_manifests_model_directory_is_gone(tiny_clip_dir, tmp_path, capsys):
    from geosolver.encoders import load_encoder

    moved = tmp_path / "models" / "my-clip"
    shutil.copytree(tiny_clip_dir, moved)
    enc = load_encoder(str(moved), device="cpu")
    _clip_store(tmp_path / "g", enc, 8, 0)
    _clip_store(tmp_path / "q", enc, 3, 1)
    shutil.rmtree(moved)  # the model was moved away after embedding
    before = files_under(tmp_path)
    rc = cli_main(["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), "--prior", "none,text",
                   "--k", "3", "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "run")])
    line = error_line(capsys.readouterr().err, "evaluate")
    assert rc == 2 and str(moved) in line
    assert files_under(tmp_path) == before


def test_evaluate_zero_shot_with_a_template_without_its_levels_placeholder(enc, tmp_path, capsys):
    _clip_store(tmp_path / "g", enc, 8, 0)
    _clip_store(tmp_path / "q", enc, 3, 1)
    before = files_under(tmp_path)
    rc = cli_main(["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), "--zero-shot", "regions",
                   "--prompt", "{country}", "--k", "3", "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "run")])
    line = error_line(capsys.readouterr().err, "evaluate")
    assert rc == 2 and "{region}" in line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("opt,value", [("--prompt", "{country}"), ("--text-temperature", "0.5")])
def test_evaluate_text_options_without_a_text_model_exit_2(opt, value, tmp_path, capsys):
    """--prompt / --text-temperature with neither --prior text nor --zero-shot would be silently ignored."""
    rc = cli_main(["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), opt, value,
                   "--out", str(tmp_path / "run")])
    line = error_line(capsys.readouterr().err, "evaluate")
    assert rc == 2 and opt in line and "--prior text" in line
    assert not files_under(tmp_path)


# ================================================================================================
# 5. Play mode: damaged query stores at start-up
# ================================================================================================
N_GALLERY = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Overrides conftest's ``world``: a histogram gallery (``store``) and a small Play query store."""
    from geosolver.encoders import load_encoder

    root = tmp_path_factory.mktemp("hostile-play")
    enc = load_encoder("histogram")
    lat, lon = zip(*(gallery_coords(i) for i in range(N_GALLERY)))
    gallery = write_store(root / "gallery", enc.embed_images([encode(pattern(i), "PNG") for i in range(N_GALLERY)]),
                          pd.DataFrame({"id": [f"g{i:03d}" for i in range(N_GALLERY)], "lat": lat, "lon": lon}), enc.identity())
    photos = []
    for j in range(3):
        data = encode(pattern(200 + j), "PNG")
        (root / f"q{j}.png").write_bytes(data)
        photos.append(data)
    meta = pd.DataFrame({"id": ["q0", "q1", "q2"], "source": [str(root / f"q{j}.png") for j in range(3)],
                         "lat": [51.5, -33.9, 40.7], "lon": [-0.1, 151.2, -74.0]})
    queries = write_store(root / "queries", enc.embed_images(photos), meta, enc.identity())
    return {"root": root, "store": gallery, "queries": queries, "encoder": enc, "meta": meta, "photos": photos}


def _query_store(world, path: Path, meta: pd.DataFrame) -> Path:
    enc = world["encoder"]
    write_store(path, enc.embed_images(world["photos"][: len(meta)]), meta, enc.identity())
    return path


def _damage_metadata(store: Path, damage: str) -> None:
    """Rewrite the store's metadata file behind its back (write_store itself refuses bad coordinates)."""
    (pq,) = store.glob("shard-*.parquet")
    meta = pd.read_parquet(pq)
    if damage == "nan-coordinates":
        meta["lat"] = np.nan
    elif damage == "text-coordinates":
        meta["lat"] = ["north", "far south", "?"][: len(meta)]
    elif damage == "no-lat-column":
        meta = meta.drop(columns=["lat"])
    elif damage == "garbage-parquet":
        pq.write_bytes(b"PAR1 this is not a parquet file PAR1")
        return
    meta.to_parquet(pq)


def _serve_cli(world, queries: Path, monkeypatch, capsys) -> tuple[int, str]:
    import geosolver.serve.app as app_mod

    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: pytest.fail("served despite a bad --play store"))
    capsys.readouterr()
    rc = cli_main(["serve", "--gallery", str(world["store"].path), "--model", "histogram", "--play", str(queries)])
    return rc, capsys.readouterr().err


def test_play_store_without_a_source_column_exits_2_with_one_line(world, tmp_path, monkeypatch, capsys):
    q = _query_store(world, tmp_path / "q", world["meta"].drop(columns=["source"]))
    rc, err = _serve_cli(world, q, monkeypatch, capsys)
    line = error_line(err, "serve")
    assert rc == 2 and "`source` column" in line and str(q) in line


def test_play_store_whose_sources_are_all_empty_exits_2_with_one_line(world, tmp_path, monkeypatch, capsys):
    meta = world["meta"].assign(source=["", None, ""])
    q = _query_store(world, tmp_path / "q", meta)
    rc, err = _serve_cli(world, q, monkeypatch, capsys)
    line = error_line(err, "serve")
    assert rc == 2 and "no query row" in line and "photo source" in line


@pytest.mark.parametrize("damage", ["nan-coordinates", "text-coordinates", "no-lat-column", "garbage-parquet"])
def test_play_store_with_damaged_coordinates_exits_2_with_one_line(damage, world, tmp_path, monkeypatch, capsys):
    q = _query_store(world, tmp_path / "q", world["meta"])
    _damage_metadata(q, damage)
    rc, err = _serve_cli(world, q, monkeypatch, capsys)
    line = error_line(err, "serve")
    assert rc == 2 and "--play" in line and str(q) in line


def test_play_rows_with_nan_coordinates_are_never_drawn(world, geoloc, tmp_path):
    """A partly damaged store still plays: its rows without valid coordinates are left out at start-up."""
    q = _query_store(world, tmp_path / "q", world["meta"])
    (pq,) = q.glob("shard-*.parquet")
    meta = pd.read_parquet(pq)
    meta.loc[0, "lat"], meta.loc[2, "lon"] = np.nan, np.inf
    meta.to_parquet(pq)
    with serve_client(geoloc, play=q, warmup=False, k=3) as c:
        assert c.get("/api/play").json()["queries"] == 1
        play = c.app.state.serve.play
        for _ in range(5):
            d = c.get("/api/round").json()
            assert play.ids[play.book.peek(d["token"])] == "q1"
        r = c.post(f"/api/round/{d['token']}/guess", json={"lat": -33.0, "lon": 151.0})
        assert r.status_code == 200 and r.json()["truth"]["lat"] == pytest.approx(-33.9)


# ================================================================================================
# 6. Play mode: hostile guesses and tokens
# ================================================================================================
@pytest.fixture(scope="module")
def serve_options(world):
    """conftest's ``client`` (over conftest's ``geoloc`` of this module's ``world``) serves Play, nn over 3 neighbours."""
    return {"play": world["queries"].path, "warmup": False, "k": 3, "strategy": "nn"}


def _token(client) -> str:
    r = client.get("/api/round")
    assert r.status_code == 200, r.text
    return r.json()["token"]


def _one_line_detail(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail.splitlines()) == 1 and len(detail) < 300, detail
    return detail


def test_coordinates_as_strings_with_spaces_are_read_as_numbers(client):
    r = client.post(f"/api/round/{_token(client)}/guess", json={"lat": "  12.5 ", "lon": "\t-3.25\n"})
    assert r.status_code == 200, r.text
    assert (r.json()["player"]["lat"], r.json()["player"]["lon"]) == (12.5, -3.25)


HOSTILE_BODIES = [
    ("huge JSON integer", b'{"lat": 1' + b"0" * 400 + b', "lon": 2}', 422, "lat must be a finite number"),
    ("1e309 literal", b'{"lat": 1e309, "lon": 2}', 422, "lat must be a finite number"),
    ("1e309 string", b'{"lat": 10, "lon": "1e309"}', 422, "lon must be a finite number"),
    ("huge negative", b'{"lat": -1e308, "lon": 2}', 422, "[-90, 90]"),
    ("nested object", b'{"lat": {"deg": 1, "min": 30}, "lon": 2}', 422, "lat must be a number"),
    ("deeply nested array", b'{"lat": ' + b"[" * 2000 + b"]" * 2000 + b', "lon": 2}', 400, "not valid JSON"),
    ("JSON string body", b'"lat=1&lon=2"', 422, "JSON object"),
    ("invalid UTF-8", b'{"lat": "\xff\xfe", "lon": 2}', 400, "not valid JSON"),
]


@pytest.mark.parametrize("body,status,words", [c[1:] for c in HOSTILE_BODIES], ids=[c[0] for c in HOSTILE_BODIES])
def test_hostile_guess_bodies_get_one_line_and_keep_the_round(client, body, status, words):
    token = _token(client)
    r = client.post(f"/api/round/{token}/guess", content=body, headers={"content-type": "application/json"})
    assert words in _one_line_detail(r, status)
    assert client.post(f"/api/round/{token}/guess", json={"lat": 1, "lon": 1}).status_code == 200  # the round was kept


@pytest.mark.parametrize(
    "token",
    ["..%2F..%2F..%2Fetc%2Fpasswd", "..", "%00", "A" * 10_000, "%F0%9F%8C%8D" * 50, "tok%20en%0Aline"],
    ids=["traversal", "dotdot", "nul", "10kB", "emoji", "space-newline"],
)
def test_hostile_tokens_are_unknown_rounds(client, token, world):
    for r in (client.get(f"/api/round/{token}/photo"), client.post(f"/api/round/{token}/guess", json={"lat": 1, "lon": 2})):
        detail = _one_line_detail(r, 404)  # ".." is normalised away by the client: no route at all, still 404
        assert "A" * 100 not in detail and "passwd" not in detail  # the token is not echoed
    assert (world["root"] / "q0.png").exists()


def test_concurrent_guesses_on_one_token_score_exactly_once(client):
    token = _token(client)
    start = threading.Barrier(8)

    def one(i):
        start.wait()
        return client.post(f"/api/round/{token}/guess", json={"lat": i, "lon": i})

    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(one, range(8)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200] + [409] * 7, codes
    for r in rs:
        if r.status_code == 409:
            assert "already played" in _one_line_detail(r, 409)
    assert math.isfinite(next(r for r in rs if r.status_code == 200).json()["player"]["km"])

