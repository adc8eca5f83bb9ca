"""The embedded export on crafted job results: incremental, idempotent, tamper-evident, careful with models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bridge_jobs import crafted_job, flare_audit_lines, record_dir, running_snapshot, write_events
from deltalake import DeltaTable
from mlflow import MlflowClient

from databricks_bridge import BridgeError, BridgeSettings, TamperedTrailError, export_job
from databricks_bridge.delta_sink import LocalWarehouse
from databricks_bridge.facts import static_params
from databricks_bridge.job_result import load_job_result, sha256_of
from databricks_bridge.model_files import load_model
from fitfed.cli import main as fitfed_main

MODEL = "main.fitfed.churn_model"
TABLE = "main.fitfed.fl_audit_events"


def _client(settings: BridgeSettings) -> MlflowClient:
    uri = f"sqlite:///{(settings.state_dir / 'mlflow.db').resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _rows(settings: BridgeSettings) -> list[dict]:
    return LocalWarehouse(settings.state_dir / "warehouse").read(TABLE).to_pylist()


def _table_version(settings: BridgeSettings) -> int:
    return DeltaTable(str(settings.state_dir / "warehouse" / "main" / "fitfed" / "fl_audit_events")).version()


def test_export_while_running_then_finished_adds_only_what_is_new(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: the same run seen mid-round 2, then finished after 3 rounds
    finished = crafted_job(tmp_path / "finished", rounds=3)
    running = running_snapshot(finished, tmp_path / "running", rounds_done=1)

    # Execute
    during = export_job(running, lakehouse)
    after = export_job(finished, lakehouse)
    again = export_job(finished, lakehouse)

    # Assert: while running, round 0's scores and the model after round 1 (round 1's scores are half in); no model
    assert (during.finished, during.rounds_logged, during.round_models, during.model_version) == (False, 1, 1, None)
    assert (after.run_id, after.new_run, after.rounds_logged, after.round_models) == (during.run_id, False, 3, 2)
    assert after.model_version == "1" and "first champion" in after.champion
    assert again.nothing_new and again.run_id == after.run_id

    client = _client(lakehouse)
    history = client.get_metric_history(after.run_id, "global/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(after.run_id, "club_02/roc_auc")] == [0, 1, 2, 3]
    run = client.get_run(after.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["algorithm"], params["clubs"], params["rounds_completed"]) == (
        "fedavg",
        "club_01,club_02,club_03",
        "3",
    )
    assert (params["dp"], params["dp_epsilon_spent"], params["he"]) == ("off", "off", "off")
    assert params["aggregator"] == "weighted_average (FLARE built-in)"
    artifacts = {
        a.path for folder in ("config", "plots", "rounds") for a in client.list_artifacts(after.run_id, folder)
    }
    assert artifacts == {
        "config/config_fed_client.json", "config/config_fed_server.json", "config/fitfed_train.json",
        "plots/metrics_by_round.png", *(f"rounds/global_model_round_{r}.pt" for r in (1, 2, 3)),
    }  # fmt: skip

    events = load_job_result(finished).events
    rows = _rows(lakehouse)
    assert sorted(r["event_id"] for r in rows if r["service_name"] == "fitfed") == sorted(e["hash"] for e in events)
    assert [r["action_name"] for r in rows if r["service_name"] == "fitfed.bridge"] == ["export_done"] * 2
    assert len({r["event_id"] for r in rows}) == len(rows)

    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["fitfed_audit_head"] == events[-1]["hash"]
    assert version.tags["fitfed_clubs"] == "club_01,club_02,club_03" and version.tags["fitfed_rounds"] == "3"
    assert (version.tags["fitfed_algorithm"], version.tags["fitfed_epsilon"]) == ("fedavg", "off")


def test_registered_model_loads_without_fitfed(job: Path, lakehouse: BridgeSettings):
    # Prepare
    export_job(job, lakehouse)
    uri = f"sqlite:///{(lakehouse.state_dir / 'mlflow.db').resolve()}"
    x = torch.randn(4, 16)
    expected = load_model(record_dir(job) / "global_model.pt", record_dir(job) / "global_model.json").module(x)

    # Execute: a fresh Python in which `import fitfed` fails, as on a serving cluster
    script = (
        "import sys; sys.modules['fitfed'] = None\n"
        "import mlflow, torch\n"
        f"mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})\n"
        f"model = mlflow.pytorch.load_model('models:/{MODEL}@champion')\n"
        f"print(model(torch.tensor({x.tolist()!r})).tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.allclose(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), expected, atol=1e-6)


def test_altered_event_is_refused_and_nothing_changes(job: Path, lakehouse: BridgeSettings):
    # Prepare: an exported job whose record is then edited (a club's accuracy raised)
    export_job(job, lakehouse)
    version, tags = _table_version(lakehouse), _client(lakehouse).search_runs(["1"])[0].data.tags
    events_file = record_dir(job) / "events.jsonl"
    events_file.write_text(events_file.read_text().replace('"accuracy": 0.6', '"accuracy": 0.9', 1))

    # Execute / Assert
    with pytest.raises(TamperedTrailError, match=r"events.jsonl:3: its content does not match its hash"):
        export_job(job, lakehouse)
    assert _table_version(lakehouse) == version
    assert _client(lakehouse).search_runs(["1"])[0].data.tags == tags


def test_rewritten_record_is_refused(job: Path, lakehouse: BridgeSettings):
    # Prepare: after an export, the record is rewritten as a fresh, self-consistent chain
    export_job(job, lakehouse)
    events_file = record_dir(job) / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    events[3]["metrics"]["accuracy"] = 0.99
    write_events(events_file, [{k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} for e in events])

    # Execute / Assert
    with pytest.raises(TamperedTrailError, match=r"events.jsonl event \d+ does not match the audit head"):
        export_job(job, lakehouse)


def test_champion_moves_only_to_a_better_model(tmp_path: Path, lakehouse: BridgeSettings):
    # Execute: a first job, a worse one, a better one
    first = export_job(crafted_job(tmp_path / "a"), lakehouse)
    worse = export_job(crafted_job(tmp_path / "b", quality=-0.1), lakehouse)
    better = export_job(crafted_job(tmp_path / "c", quality=0.1), lakehouse)

    # Assert
    assert (first.model_version, worse.model_version, better.model_version) == ("1", "2", "3")
    assert worse.champion == "v2 accuracy 0.5500 does not beat champion v1 0.6500"
    assert better.champion == "v3 accuracy 0.7500 beats v1 0.6500"
    client = _client(lakehouse)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"
    assert client.get_run(worse.run_id).data.tags["fitfed.champion_decision"] == worse.champion


def test_he_ciphertext_is_never_registered_a_decrypted_model_is(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: an HE job; the server holds only ciphertext
    job = crafted_job(tmp_path / "he", he=True)

    # Execute: no club's decrypted model yet
    before = export_job(job, lakehouse)

    # Assert
    assert before.model_version is None
    assert "ciphertext and is never registered, and no club's decrypted model for it was found" in before.model_note
    assert _client(lakehouse).search_model_versions(f"name = '{MODEL}'") == []

    # Prepare: club_01 holds the key and wrote the decrypted final model
    decrypted = job / "club_01" / "simulate_job" / "fitfed"
    decrypted.mkdir(parents=True)
    sidecar = json.loads((record_dir(job) / "global_model.json").read_text())
    ciphertext_hash = sha256_of(record_dir(job) / "global_model.pt")
    sidecar.update(encrypted=False, decrypted_by="club_01", decrypted_from_sha256=ciphertext_hash)
    (decrypted / "decrypted_global_model.json").write_text(json.dumps(sidecar))
    weights = torch.load(record_dir(job) / "global_model.pt")
    torch.save(weights, decrypted / "decrypted_global_model.pt")

    # Execute / Assert: the decrypted model is registered, once
    after = export_job(job, lakehouse)
    assert after.model_version == "1" and after.model_note == "decrypted by key-holding club 'club_01'"
    assert export_job(job, lakehouse).nothing_new


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BridgeSettings]:
    """One job exported once, shared by the bad-input cases (which must not change it)."""
    root = tmp_path_factory.mktemp("exported")
    settings = BridgeSettings(state_dir=root / "lakehouse")
    job = crafted_job(root / "job")
    export_job(job, settings)
    return job, settings


def _missing_config(job: Path) -> None:
    (job / "server" / "simulate_job" / "app_server" / "config" / "fitfed_train.json").unlink()


def _corrupt_model(job: Path) -> None:
    (record_dir(job) / "global_model.pt").write_bytes(b"PK\x03\x04 not really a zip")


def _malformed_audit(job: Path) -> None:
    text = flare_audit_lines("simulate_job", "club_02", 2) + "club_02 lost power\n"
    (job / "club_02").mkdir()
    (job / "club_02" / "audit.log").write_text(text)


def _truncated_record(job: Path) -> None:
    events_file = record_dir(job) / "events.jsonl"
    events_file.write_text("".join(events_file.read_text().splitlines(keepends=True)[:5]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_missing_config, r"simulate_job: no app_\*/config/fitfed_train.json .* the job result is partial"),
        (_corrupt_model, r"fitfed/global_model.pt: not a readable PyTorch state dict .* corrupt or truncated"),
        (_malformed_audit, r"club_02/audit.log:3: not a FLARE audit record"),
        (_truncated_record, r"events.jsonl has 5 events, but \d+ were already exported"),
    ],
)
def test_bad_job_result_is_named_and_harms_nothing(damage, message: str, exported, tmp_path: Path):  # noqa: ANN001
    # Prepare: a copy of the exported job, damaged
    job, settings = exported
    version, rows = _table_version(settings), len(_rows(settings))
    run = _client(settings).search_runs(["1"])[0]
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    damage(copy)

    # Execute / Assert
    with pytest.raises(BridgeError, match=message):
        export_job(copy, settings)
    assert (_table_version(settings), len(_rows(settings))) == (version, rows)
    after = _client(settings).get_run(run.info.run_id)
    assert (after.data.tags, after.data.params, after.data.metrics) == (
        run.data.tags,
        run.data.params,
        run.data.metrics,
    )


def test_missing_folder_and_missing_record(tmp_path: Path, lakehouse: BridgeSettings):
    with pytest.raises(BridgeError, match=r"nowhere: no such folder. JOB_RESULT is a simulator job workspace"):
        export_job(tmp_path / "nowhere", lakehouse)
    (tmp_path / "empty" / "server").mkdir(parents=True)
    with pytest.raises(BridgeError, match=r"empty: no fitfed run record \(fitfed/events.jsonl\) below it"):
        export_job(tmp_path / "empty", lakehouse)


def test_params_come_from_the_jobs_config(job: Path):
    # Prepare: DP settings in the train config and a robust aggregator component on the server
    config_dir = job / "server" / "simulate_job" / "app_server" / "config"
    train = json.loads((config_dir / "fitfed_train.json").read_text())
    dp = {"noise_multiplier": 1.1, "clip_norm": 1.0, "target_epsilon": 3.0, "target_delta": 1e-5}
    (config_dir / "fitfed_train.json").write_text(json.dumps({**train, "dp": dp}))
    server = json.loads((config_dir / "config_fed_server.json").read_text())
    server["components"].append(
        {"id": "aggregator", "path": "fitfed.aggregation.aggregator.RobustAggregator", "args": {"method": "median"}}
    )
    (config_dir / "config_fed_server.json").write_text(json.dumps(server))

    # Execute
    params = static_params(load_job_result(job))

    # Assert
    assert (params["dp"], params["dp_noise_multiplier"], params["dp_target_epsilon"]) == ("on", "1.1", "3.0")
    assert params["aggregator"] == 'RobustAggregator {"method": "median"}'
    assert (params["he"], params["num_rounds"], params["key_metric"]) == ("off", "5", "accuracy")


def test_fitfed_export_command(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # Execute
    state = ["--state", str(tmp_path / "lakehouse")]
    first = fitfed_main(["export", str(job), *state])
    first_out = capsys.readouterr().out
    second = fitfed_main(["export", str(job), *state])
    second_out = capsys.readouterr().out
    failed = fitfed_main(["export", str(tmp_path / "nowhere"), *state])
    error = capsys.readouterr().err

    # Assert
    assert (first, second, failed) == (0, 0, 1)
    assert "new MLflow run" in first_out and "model         main.fitfed.churn_model version 1" in first_out
    assert f"ui --backend-store-uri sqlite:///{(tmp_path / 'lakehouse' / 'mlflow.db').resolve()}" in first_out
    assert "nothing new: already exported as it is" in second_out
    assert error.startswith("fitfed export: error: ") and error.count("\n") == 1
