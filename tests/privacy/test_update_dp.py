from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.task_utils import apply_filters
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from opacus.accountants import RDPAccountant

from fitfed.audit import verify_chain
from fitfed.lineage import RESUME_FILE, ResumePlan
from fitfed.privacy.ledger import PrivacyBudgetExceeded, ledger_path
from fitfed.privacy.update_dp import DP_META_KEY, GaussianUpdateDP, privatize

DELTA = 1e-5
SITE = "club_01"
JOB = "job-1"


class _Workspace:
    def __init__(self, root: Path):
        self.root = root

    def get_root_dir(self) -> str:
        return str(self.root)

    def get_app_config_dir(self, job_id: str) -> str:
        return str(self.root / job_id / "app" / "config")


class _Engine:
    """What the filter asks of FLARE's client engine: the kit's workspace."""

    def __init__(self, root: Path):
        self.workspace = _Workspace(root)

    def get_workspace(self) -> _Workspace:
        return self.workspace


def _kit(tmp_path: Path, epsilon: float | None = 100.0) -> Path:
    (tmp_path / "local").mkdir()
    site = {"data_path": "club.csv"}
    if epsilon is not None:
        site["privacy_budget"] = {"epsilon": epsilon, "delta": DELTA}
    (tmp_path / "local" / "fitfed_site.yaml").write_text(yaml.safe_dump(site))
    return tmp_path


def _context(kit: Path, job: str = JOB) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, _Engine(kit), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, job, private=False, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, SITE, private=False, sticky=False)
    return fl_ctx


def _update(params: dict, params_type: ParamsType = ParamsType.DIFF, metrics: dict | None = None) -> Shareable:
    """A training result as the Client API packs it: the update, with the received model's metrics."""
    return FLModelUtils.to_shareable(FLModel(params=params, params_type=params_type, metrics=metrics or {"loss": 0.5}))


def _send(dp: GaussianUpdateDP, result: Shareable, kit: Path) -> DXO:
    """Run the filter as FLARE runs a scope's task_result_filters on a train result."""
    out = apply_filters("task_result_filters", result, _context(kit), {"train/out": [dp]}, "train", FilterKey.OUT)
    return from_shareable(out)


def _receive(dp: GaussianUpdateDP, task: Shareable, kit: Path, task_name: str = "train") -> Shareable:
    """Run the filter as FLARE's client runner runs a scope's task_data_filters on incoming task data."""
    fl_ctx = _context(kit)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, task_name, private=True, sticky=False)
    return apply_filters("task_data_filters", task, fl_ctx, {f"{task_name}/in": [dp]}, task_name, FilterKey.IN)


def _norm(update: dict) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in update.values()))


def _events(kit: Path) -> list[str]:
    path = ledger_path(kit)
    return [r["event"] for r in verify_chain(path)] if path.exists() else []


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_privatize_without_noise_clips_the_whole_update_to_the_norm(scale):
    # Prepare: norm 5 * scale, split over two tensors
    update = {"a": np.array([3.0, 0.0]) * scale, "b": torch.tensor([[4.0]]) * scale}

    # Execute
    clipped, was_clipped = privatize(update, clip_norm=2.0, noise_std=0.0)

    # Assert: clipped to 2 when larger, untouched when smaller; direction kept
    assert _norm(clipped) == pytest.approx(min(2.0, 5.0 * scale))
    assert was_clipped == (5.0 * scale > 2.0)
    assert clipped["a"][0] / float(clipped["b"][0, 0]) == pytest.approx(0.75)


def test_noise_has_the_configured_std_and_fresh_draws(tmp_path: Path):
    # Prepare: a zero update, so what comes out is the noise
    kit = _kit(tmp_path)
    dp = GaussianUpdateDP(clip_norm=2.0, noise_multiplier=0.5)

    # Execute
    first = _send(dp, _update({"w": np.zeros(200_000)}), kit).data["w"]
    second = _send(dp, _update({"w": np.zeros(200_000)}), kit).data["w"]

    # Assert: std 0.5 * 2 = 1 (standard error of the std ~ 0.0016), mean 0, and not the same draw twice
    assert np.std(first) == pytest.approx(1.0, abs=0.01)
    assert abs(np.mean(first)) < 0.01
    assert not np.allclose(first, second)


def test_torch_and_numpy_values_keep_their_type_and_dtype(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path)
    update = {
        "t32": torch.ones(3, dtype=torch.float32),
        "t64": torch.ones(2, dtype=torch.float64),
        "n32": np.ones(4, dtype=np.float32),
        "n64": np.ones((2, 2)),
    }

    # Execute
    out = _send(GaussianUpdateDP(clip_norm=1.0, noise_multiplier=1.0), _update(update), kit).data

    # Assert
    assert (out["t32"].dtype, out["t64"].dtype) == (torch.float32, torch.float64)
    assert (out["n32"].dtype, out["n64"].dtype) == (np.float32, np.float64)
    assert out["n64"].shape == (2, 2)
    assert not torch.equal(out["t32"], update["t32"])


def test_epsilon_of_k_rounds_is_reported_and_matches_an_independent_recomputation(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path)
    dp = GaussianUpdateDP(clip_norm=1.0, noise_multiplier=2.0)

    # Execute: three rounds of the same job
    results = [_send(dp, _update({"w": np.ones(3)}), kit) for _ in range(3)]

    # Assert: round k reports the epsilon of k Gaussian mechanisms (sample rate 1) at the budget's delta
    for k, dxo in enumerate(results, start=1):
        reference = RDPAccountant()
        for _ in range(k):
            reference.step(noise_multiplier=2.0, sample_rate=1.0)
        metrics = dxo.get_meta_prop(MetaKey.INITIAL_METRICS)
        assert metrics["privacy_epsilon"] == pytest.approx(reference.get_epsilon(DELTA), rel=1e-12)
        assert (metrics["privacy_delta"], metrics["loss"]) == (DELTA, 0.5)
        assert dxo.get_meta_prop(DP_META_KEY) == {
            "mechanism": "update_dp",
            "clip_norm": 1.0,
            "noise_multiplier": 2.0,
            "accountant": "rdp",
            "epsilon": metrics["privacy_epsilon"],
            "delta": DELTA,
        }
    assert _events(kit) == ["round_spent"] * 3
    assert FLModelUtils.from_shareable(results[-1].to_shareable()).metrics["privacy_epsilon"] > 0


def test_a_resumed_job_continues_its_training_s_count_and_says_which_job_released_the_round(tmp_path: Path):
    # Prepare: job-1 released two rounds, then its server crashed; job-2 continues it (fitfed resume)
    kit = _kit(tmp_path)
    dp = GaussianUpdateDP(clip_norm=1.0, noise_multiplier=2.0)
    for _ in range(2):
        _send(dp, _update({"w": np.ones(3)}), kit)
    config = kit / "job-2" / "app" / "config"
    config.mkdir(parents=True)
    (config / RESUME_FILE).write_text(ResumePlan(resumed_from=JOB, lineage_root=JOB).model_dump_json())

    # Execute: the continuation releases its first round
    result, fl_ctx = _update({"w": np.ones(3)}), _context(kit, job="job-2")
    apply_filters("task_result_filters", result, fl_ctx, {"train/out": [dp]}, "train", FilterKey.OUT)

    # Assert: charged as job-1's third round (not a second job's first), released by job-2
    last = verify_chain(ledger_path(kit))[-1]
    assert (last["job_id"], last["run_job_id"], last["steps_job"]) == (JOB, "job-2", 3)
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=2.0, sample_rate=1.0)
    assert last["epsilon_job"] == pytest.approx(reference.get_epsilon(DELTA), rel=1e-12)


def test_full_weights_are_refused(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path)
    message = "update-level DP needs weight differences, but the result holds full weights"

    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        _send(GaussianUpdateDP(1.0, 1.0), _update({"w": np.ones(2)}, ParamsType.FULL), kit)
    assert "params_transfer_type=TransferType.DIFF" in str(refused.value)
    assert _events(kit) == []


@pytest.mark.parametrize("encrypted", ["meta", "value"])
def test_an_encrypted_update_is_refused(tmp_path: Path, encrypted: str):
    # Prepare: an HE encryptor already ran (its meta flag, or ciphertext bytes instead of arrays)
    kit = _kit(tmp_path)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": b"ciphertext" if encrypted == "value" else np.ones(2)})
    if encrypted == "meta":
        dxo.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, "CKKS")

    message = "DP noise must be added before HE encryption: put GaussianUpdateDP in the club's privacy.json scope"

    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape(message)):
        _send(GaussianUpdateDP(1.0, 1.0), dxo.to_shareable(), kit)


def test_without_a_budget_the_filter_refuses_to_release(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path, epsilon=None)

    message = "local/fitfed_site.yaml sets no privacy budget; add 'privacy_budget: {epsilon: ..., delta: ...}' there"

    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape(message)):
        _send(GaussianUpdateDP(1.0, 1.0), _update({"w": np.ones(2)}), kit)
    with pytest.raises(ValueError, match="sets no privacy budget"):
        _receive(GaussianUpdateDP(1.0, 1.0), _update({"w": np.ones(2)}, ParamsType.FULL), kit)


def test_exhausted_budget_refuses_in_both_directions_and_records_it(tmp_path: Path):
    # Prepare: a budget for two rounds at noise 3, not three
    two, three = (RDPAccountant(), RDPAccountant())
    two.history, three.history = [(3.0, 1.0, 2)], [(3.0, 1.0, 3)]
    kit = _kit(tmp_path, epsilon=(two.get_epsilon(DELTA) + three.get_epsilon(DELTA)) / 2)
    dp = GaussianUpdateDP(clip_norm=1.0, noise_multiplier=3.0)

    def task(round_number: int) -> Shareable:
        return FLModelUtils.to_shareable(FLModel(params={"w": np.ones(2)}, current_round=round_number))

    for r in range(2):
        _receive(dp, task(r), kit)
        _send(dp, _update({"w": np.ones(2)}), kit)

    # Execute / Assert: the third round is refused before training and again if a result comes anyway
    with pytest.raises(PrivacyBudgetExceeded, match=re.escape("site 'club_01': privacy budget exceeded")) as before:
        _receive(dp, task(2), kit)
    with pytest.raises(PrivacyBudgetExceeded, match=re.escape("the next round of job 'job-1' (update_dp)")):
        _send(dp, _update({"w": np.ones(2)}), kit)

    # Assert: task data names its round; results do not
    assert "round 2 of job 'job-1' (update_dp)" in str(before.value)
    assert _events(kit) == ["round_spent", "round_spent", "refused", "refused"]
    assert [r["round"] for r in verify_chain(ledger_path(kit))] == [None, None, 2, None]


def test_incoming_task_data_is_not_modified_and_nothing_is_charged(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path)
    weights = {"w": np.arange(4.0)}
    task = _update(dict(weights), ParamsType.FULL)

    # Execute
    received = from_shareable(_receive(GaussianUpdateDP(1.0, 1.0), task, kit))

    # Assert
    assert received.data_kind == DataKind.WEIGHTS
    np.testing.assert_array_equal(received.data["w"], weights["w"])
    assert DP_META_KEY not in received.meta
    assert _events(kit) == []


def test_validation_passes_untouched_even_with_the_budget_spent(tmp_path: Path):
    # Prepare: a budget too small for any round
    kit = _kit(tmp_path, epsilon=0.01)
    dp = GaussianUpdateDP(1.0, 1.0)
    metrics = FLModelUtils.to_shareable(FLModel(metrics={"accuracy": 0.8}))

    # Execute
    _receive(dp, _update({"w": np.ones(2)}, ParamsType.FULL), kit, task_name="validate")
    sent = _send(dp, metrics, kit)

    # Assert
    assert sent.data_kind == DataKind.METRICS and sent.data == {"accuracy": 0.8}
    assert _events(kit) == []


def test_a_dp_sgd_epsilon_already_reported_adds_up(tmp_path: Path):
    # Prepare
    kit = _kit(tmp_path)
    result = _update({"w": np.ones(2)}, metrics={"privacy_epsilon": 1.25, "privacy_delta": 1e-6})

    # Execute
    metrics = _send(GaussianUpdateDP(1.0, 2.0), result, kit).get_meta_prop(MetaKey.INITIAL_METRICS)

    # Assert
    update_level = metrics["privacy_epsilon_update_dp"]
    assert metrics["privacy_epsilon"] == pytest.approx(1.25 + update_level)
    assert metrics["privacy_delta"] == pytest.approx(1e-6 + DELTA)
    assert metrics["privacy_epsilon_dp_sgd"] == 1.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm=0.0: expected > 0"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier=-1.0: expected > 0"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "accountant": "gdp"}, "use one of rdp, prv"),
    ],
)
def test_settings_are_checked_when_the_scope_is_loaded(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GaussianUpdateDP(**args)
