"""CLI start-up: ``geosolver --help`` and light commands build only what they need, and the
summaries ``--help`` lists without importing the commands are the commands' own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from geosolver.cli import COMMANDS, build_parser

HEAVY = ("torch", "transformers", "pandas")


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_summaries_are_the_registered_helps_in_order():
    full = _subcommands(build_parser())
    registered = [(a.dest, a.help) for a in full._choices_actions]
    assert registered == [(name, summary) for name, _, summary in COMMANDS]


def test_top_level_help_is_the_same_with_and_without_the_commands_built():
    assert build_parser(set()).format_help() == build_parser().format_help()


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["terrain", "build", "--help"], ["download", "--help"],
                                  ["analyze", "--help"], ["train", "--help"], ["embed", "--help"], ["locate", "--help"],
                                  ["index", "build", "--help"], ["curate", "--help"], ["head", "train", "--help"],
                                  ["study", "--help"], ["demo", "--help"], ["enrich", "--help"], ["--version"]])
def test_light_commands_import_no_torch_transformers_or_pandas(argv):
    code = ("import sys, io, contextlib, json\nfrom geosolver.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try: main({argv!r})\n    except SystemExit: pass\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_train_keeps_the_spellings_transformers_hfargumentparser_accepted():
    """`train`'s parser is no longer transformers' HfArgumentParser: what that accepted still parses
    the same (underscore spellings, `--no_x`, a boolean's optional value), and `--no-x` is new."""
    from geosolver.cli.train_cmd import train_config

    def parse(*argv):
        return train_config(build_parser({"train"}).parse_args(["train", "--data", "r", "--out", "o", *argv]))

    cfg = parse("--w_distill", "0.25", "--batch_size", "8", "--no_flip", "--cache_images", "--progress", "false",
                "--overwrite", "yes", "--balance_edges_km", "0", "7", "20100")
    assert (cfg.w_distill, cfg.batch_size, cfg.flip, cfg.cache_images, cfg.progress, cfg.overwrite) == (0.25, 8, False, True, False, True)
    assert cfg.balance_edges_km == [0.0, 7.0, 20100.0]
    assert parse("--gradient-checkpointing", "--no-gradient-checkpointing").gradient_checkpointing is False
    assert parse("--flip", "0", "--flip").flip is True  # the last one wins, a bare flag is "yes"
    with pytest.raises(SystemExit):
        parse("--flip", "maybe")
