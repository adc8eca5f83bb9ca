"""A tiny run of the robustness benchmark writes well-formed results; its building blocks are checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.robustness import ATTACKS, METHODS, choose_attackers, main
from benchmarks.splits import split_hospitals, stratified_parts
from fitfed.datasets.heart_disease import write_sites
from fitfed.spec import load_spec


def test_smoke_run_writes_json_and_a_markdown_table(tmp_path: Path):
    # Execute: 2 rounds of 2 local steps, two rules, two attacks, one seed, in this process
    argv = ["--rounds", "2", "--seeds", "0", "--local-steps", "2", "--methods", "fedavg", "krum",
            "--attacks", "none", "sign_flip_x10", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0

    # Assert
    payload = json.loads((tmp_path / "robustness.json").read_text())
    assert {"command", "machine", "settings", "summary", "targets", "runs", "wall_seconds"} <= payload.keys()
    assert {"cpu", "cores", "python", "torch", "nvflare", "workers"} <= payload["machine"].keys()
    assert payload["settings"]["seeds"] == [0] and payload["settings"]["rounds"] == 2
    assert len(payload["runs"]) == 4
    for run in payload["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and set(run["per_hospital"]) == {
            "cleveland",
            "hungarian",
            "switzerland",
            "va",
        }
        assert len(run["attackers"]) == (0 if run["attack"] == "none" else 4)
    assert [c["method"] for c in payload["targets"]] == ["krum", "krum"]
    page = (tmp_path / "robustness.md").read_text()
    accuracy = page.split("## Mean-over-hospitals accuracy")[1].split("##")[0]
    assert "| attack | FedAvg | Krum |" in accuracy
    assert accuracy.count("\n| none | ") == 1 and accuracy.count("\n| sign_flip_x10 | ") == 1
    assert "## Per hospital" in page and "## Cost" in page and "## Targets" in page
    assert "fitfed bench robustness --rounds 2" in page
    assert main(["--render", str(tmp_path / "robustness.json")]) == 0  # re-render from saved runs, no training
    assert (tmp_path / "robustness.md").read_text() == page


def test_every_rule_in_the_benchmark_is_a_valid_aggregator_config():
    from fitfed.aggregation.config import parse_aggregator

    assert [parse_aggregator(c).method for c in METHODS.values()] == [
        "fedavg", "fedavg", "median", "trimmed_mean", "krum", "multikrum",
    ]  # fmt: skip
    assert set(ATTACKS) == {"none", "sign_flip_x10", "sign_flip_x1", "gaussian", "label_flip"}


def test_stratified_parts_deal_every_row_once_with_each_label_spread():
    # Prepare: 6 negatives then 4 positives
    labels = np.array([0] * 6 + [1] * 4)

    # Execute
    parts = stratified_parts(labels, 2, seed=0)

    # Assert: all rows, no row twice, 3 negatives and 2 positives in each part
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert [int(labels[p].sum()) for p in parts] == [2, 2] and [len(p) for p in parts] == [5, 5]


def test_too_few_rows_for_the_parts_is_refused():
    with pytest.raises(ValueError, match="2 row\\(s\\) cannot be dealt into num_parts=3"):
        stratified_parts(np.array([0, 1]), 3, seed=0)


def test_hospitals_split_into_clients_keep_flambys_test_split(tmp_path: Path):
    # Prepare
    write_sites(tmp_path)

    # Execute
    hospitals = split_hospitals(tmp_path, load_spec("heart_disease"), clients_per_hospital=5)

    # Assert: FLamby's per-hospital train/test sizes (docs/data.md), training rows dealt into 5 clients
    sizes = {h.name: (sum(len(c.y_train) for c in h.clients), len(h.y_test)) for h in hospitals}
    assert sizes == {"cleveland": (199, 104), "hungarian": (172, 89), "switzerland": (30, 16), "va": (85, 45)}
    assert all(len(h.clients) == 5 for h in hospitals)


def test_attackers_are_a_seeded_fifth_of_the_clients():
    names = [f"c{i:02d}" for i in range(20)]
    assert choose_attackers(names, 0.2, seed=0) == choose_attackers(names, 0.2, seed=0)
    assert len(choose_attackers(names, 0.2, seed=1)) == 4
