"""`fitfed bench NAME` and `python -m benchmarks NAME`: the list, mistakes, and dispatch."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.__main__ import BENCHMARKS, main
from fitfed.cli import main as fitfed_main


def test_listing_names_every_benchmark(capsys: pytest.CaptureFixture[str]):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*BENCHMARKS, "all"])


def test_unknown_name_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]):
    assert main(["heart"]) == 2
    assert "unknown benchmark 'heart'" in capsys.readouterr().err


def test_all_takes_no_options(capsys: pytest.CaptureFixture[str]):
    assert main(["all", "--seeds", "0"]) == 2
    assert "takes no options" in capsys.readouterr().err


def test_every_registered_module_has_a_main():
    for module, _, _ in BENCHMARKS.values():
        assert callable(importlib.import_module(module).main), module


def test_fitfed_bench_runs_the_runner_from_the_checkout(capfd: pytest.CaptureFixture[str]):
    assert fitfed_main(["bench", "scaling", "--help"]) == 0
    assert "fitfed bench scaling" in capfd.readouterr().out
