"""Hostile command lines: every nonsensical number is refused at the parser with one line and exit
code 2 before any work starts; bad photos make `locate` exit 2; a closed pipe is not a traceback."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main as cli_main
from geosolver.store import write_store

BAD_OPTIONS = [
    ("embed", "--batch-size", "0"), ("embed", "--batch-size", "-4"), ("embed", "--num-workers", "-1"),
    ("embed", "--shard-size", "-5"), ("embed", "--shard-size", "0"), ("embed", "--world-size", "0"),
    ("locate", "--k", "0"), ("locate", "--temperature", "nan"), ("locate", "--radius-km", "-3"),
    ("evaluate", "--bootstrap", "-1"), ("evaluate", "--nprobe", "0"), ("evaluate", "--temperature", "inf"),
    ("index build", "--nlist", "0"), ("index build", "--nprobe", "-2"), ("index build", "--memory-budget-gb", "0"),
    ("index build", "--target-recall", "1.5"), ("index build", "--target-recall", "0"),
    ("analyze", "--sample", "0"), ("curate select", "--size", "-10"), ("terrain build", "--gallery", "0"),
    ("demo", "--queries", "-1"), ("enrich", "--cell-size", "nan"),
]
REQUIRED = {  # the other arguments each command needs to reach its numeric options
    "embed": ["--out", "o", "--root", "r"], "locate": ["p.jpg", "--gallery", "g"], "evaluate": ["--queries", "q", "--gallery", "g"],
    "index build": ["s"], "analyze": ["s"], "curate select": ["s", "--size", "10", "--out", "o"],
    "terrain build": ["--out", "o", "--gallery", "10", "--queries", "10"], "demo": [], "enrich": ["s"],
}


@pytest.mark.parametrize("cmd,opt,value", BAD_OPTIONS, ids=[f"{c} {o} {v}" for c, o, v in BAD_OPTIONS])
def test_bad_numbers_are_refused_at_the_parser(cmd, opt, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main([*cmd.split(), *REQUIRED[cmd], opt, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {opt}" in err and "must be" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing was written


def _gallery(path):
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"id": ["a", "b", "c"], "lat": [0.0, 10.0, 20.0], "lon": [0.0, 10.0, 20.0]})
    return write_store(path, rng.standard_normal((3, 48)).astype(np.float32), meta,
                       {"name": "histogram", "dim": 48, "revision": "histogram-v1"})


@pytest.mark.parametrize("photo", ["missing.jpg", "corrupt.jpg", "adir"])
def test_locate_on_a_bad_photo_exits_2_with_one_line(photo, tmp_path, capsys):
    from geosolver.encoders import load_encoder

    enc = load_encoder("histogram")
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"id": ["a", "b", "c"], "lat": [0.0, 10.0, 20.0], "lon": [0.0, 10.0, 20.0]})
    write_store(tmp_path / "g", rng.standard_normal((3, enc.dim)).astype(np.float32), meta, enc.identity())
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "adir").mkdir()
    rc = cli_main(["locate", str(tmp_path / photo), "--gallery", str(tmp_path / "g"), "--model", "histogram"])
    err = capsys.readouterr().err
    assert rc == 2 and photo in err and "Traceback" not in err


def test_info_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    _gallery(tmp_path / "g")
    # `true` exits before python has started, so every write of `info` meets a closed pipe
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m geosolver info {tmp_path / 'g'} --verify | true"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
