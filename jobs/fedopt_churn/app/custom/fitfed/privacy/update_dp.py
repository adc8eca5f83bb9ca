"""Update-level differential privacy: a club clips and noises its whole model update before it leaves.

Gaussian mechanism on the update (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018): the update's L2 norm is clipped to ``clip_norm`` and every
coordinate gets N(0, (noise_multiplier * clip_norm)^2) noise. Each round a club releases is one
Gaussian mechanism over all its data (sample rate 1), counted in the club's privacy ledger.

The filter belongs in the club's ``local/privacy.json``, where the job cannot remove it, and in
the same scope under both ``task_data_filters`` and ``task_result_filters``::

    "task_data_filters": [{"path": "fitfed.privacy.update_dp.GaussianUpdateDP", "args": {...}}],
    "task_result_filters": [{"path": "fitfed.privacy.update_dp.GaussianUpdateDP", "args": {...}}, ...]

On the way in it refuses a training task the budget cannot pay for, so the club does not train
for nothing; on the way out it clips, noises and charges the ledger. Scope filters run before a
job's own filters, so the noise is added before any homomorphic encryption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fitfed.config import load_site_config, site_config_path
from fitfed.lineage import lineage_root
from fitfed.privacy.accounting import ACCOUNTANTS, epsilon_spent
from fitfed.privacy.ledger import PrivacyLedger, Spend, ledger_path

DP_META_KEY = "fitfed_dp"
MECHANISM = "update_dp"

Array = np.ndarray | torch.Tensor


class GaussianUpdateDP(DXOFilter):
    """Clips a club's model update, adds Gaussian noise, and charges the club's privacy budget.

    Args:
        clip_norm: the whole update's L2 norm (all parameters together) is clipped to this.
        noise_multiplier: noise std as a multiple of ``clip_norm``.
        accountant: Opacus accountant for the epsilon, "rdp" or "prv".

    Raises:
        ValueError: a setting is out of range (checked when the club's scope is loaded).

    Example:
        >>> dp = GaussianUpdateDP(clip_norm=1.0, noise_multiplier=1.5)
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, accountant: str = "rdp"):
        # Every data kind reaches process_dxo, so an update it cannot protect is refused, never passed on.
        super().__init__(supported_data_kinds=None, data_kinds_to_filter=None)
        if not clip_norm > 0:
            raise ValueError(f"clip_norm={clip_norm!r}: expected > 0")
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier={noise_multiplier!r}: expected > 0 (no noise gives no privacy)")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant={accountant!r} is not supported; use one of {', '.join(ACCOUNTANTS)}")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.accountant = accountant
        self._settings_logged = False

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """In: refuse a training task the budget cannot pay for. Out: clip, noise and charge the update."""
        if not self._settings_logged:
            self.log_info(fl_ctx, f"update-level DP: clip_norm={self.clip_norm}, noise={self.noise_multiplier}")
            self._settings_logged = True
        direction = fl_ctx.get_prop(FLContextKey.FILTER_DIRECTION)
        if direction == FilterKey.IN:
            if fl_ctx.get_prop(FLContextKey.TASK_NAME) == AppConstants.TASK_TRAIN:
                ledger, spend = self._next_spend(shareable, fl_ctx)
                ledger.check(spend)
            return shareable
        if direction != FilterKey.OUT:
            raise ValueError(f"filter direction {direction!r}: list {type(self).__name__} under task filters only")
        if shareable.get_return_code() == ReturnCode.OK:
            try:
                from_shareable(shareable)
            except Exception:
                raise ValueError("the task result is not a DXO, so update-level DP cannot protect it") from None
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Clip and noise a WEIGHT_DIFF update after charging the ledger; metrics-only results pass."""
        if dxo.data_kind == DataKind.METRICS:
            return None  # a validation result: no model leaves the site
        _check_releasable(dxo)
        ledger, spend = self._next_spend(shareable, fl_ctx)
        noised, clipped = privatize(
            dxo.data, clip_norm=self.clip_norm, noise_std=self.noise_multiplier * self.clip_norm
        )
        ledger.charge(spend)  # raises before anything is released when the budget cannot pay
        dxo.data = noised
        _report_epsilon(dxo, spend.epsilon_job, spend.delta)
        dxo.set_meta_prop(DP_META_KEY, {**self._settings(), "epsilon": spend.epsilon_job, "delta": spend.delta})
        self.log_info(
            fl_ctx,
            f"update-level DP: released this job's round {spend.steps_job} (update clipped: {clipped}); "
            f"job epsilon={spend.epsilon_job:.4g} at delta={spend.delta:g}, club total {ledger.spent_total():.4g}",
        )
        return dxo

    def _settings(self) -> dict[str, Any]:
        return {
            "mechanism": MECHANISM,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "accountant": self.accountant,
        }

    def _next_spend(self, shareable: Shareable, fl_ctx: FLContext) -> tuple[PrivacyLedger, Spend]:
        """The club's ledger, and what releasing this job's next round would spend."""
        root = Path(fl_ctx.get_engine().get_workspace().get_root_dir())
        site = fl_ctx.get_identity_name()
        config = load_site_config(root)
        budget = config.privacy_budget if config is not None else None
        if budget is None:
            raise ValueError(
                f"site {site!r}: {type(self).__name__} is in this club's privacy scope, but {site_config_path(root)} "
                "sets no privacy budget; add 'privacy_budget: {epsilon: ..., delta: ...}' there. "
                "No update is released without one."
            )
        ledger = PrivacyLedger(ledger_path(root), budget, site)
        run_job_id = fl_ctx.get_job_id()
        # A job resumed after a crash charges its training's first job (see fitfed.lineage): its rounds continue
        # that job's count, so the crashed job's rounds are not composed a second time.
        job_id = lineage_root(run_job_id, Path(fl_ctx.get_engine().get_workspace().get_app_config_dir(run_job_id)))
        rounds = ledger.job_state(job_id, MECHANISM).steps + 1
        epsilon = epsilon_spent(self.noise_multiplier, 1.0, rounds, budget.delta, self.accountant)
        # Task data carries the round; a result carries it only if the client set it (fitfed's does not).
        round_number = shareable.get_header(AppConstants.CURRENT_ROUND, fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
        spend = Spend(
            job_id=job_id,
            mechanism=MECHANISM,
            round=None if round_number is None else int(round_number),
            epsilon_job=epsilon,
            delta=budget.delta,
            noise_multiplier=self.noise_multiplier,
            sample_rate=1.0,
            steps_job=rounds,
            run_job_id=run_job_id if run_job_id != job_id else None,
        )
        return ledger, spend


def privatize(update: dict[str, Array], *, clip_norm: float, noise_std: float) -> tuple[dict[str, Array], bool]:
    """Clip the whole update's L2 norm to ``clip_norm`` and add N(0, noise_std^2) to every coordinate.

    The noise comes from a generator seeded by the operating system's entropy, never from
    configuration, so no one can reproduce and subtract it. Tensors stay tensors, arrays
    stay arrays, each with its dtype.

    Returns:
        the noised update, and whether clipping changed it.
    """
    norm = float(np.sqrt(sum(float((_as_numpy(v).astype(np.float64) ** 2).sum()) for v in update.values())))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    rng = np.random.default_rng()
    noised = {}
    for name, value in update.items():
        array = _as_numpy(value).astype(np.float64) * scale + rng.normal(0.0, noise_std, size=np.shape(value))
        if isinstance(value, torch.Tensor):
            noised[name] = torch.as_tensor(array, dtype=value.dtype, device=value.device)
        else:
            noised[name] = array.astype(value.dtype)
    return noised, scale < 1.0


def _as_numpy(value: Array) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _check_releasable(dxo: DXO) -> None:
    """Refuse what update-level DP cannot protect: full weights, encrypted or non-float values."""
    if dxo.data_kind == DataKind.WEIGHTS:
        raise ValueError(
            "update-level DP needs weight differences, but the result holds full weights: the job must send "
            "WEIGHT_DIFF (FLARE ScriptRunner or recipe params_transfer_type=TransferType.DIFF; fitfed privacy "
            "jobs do this)"
        )
    if dxo.data_kind != DataKind.WEIGHT_DIFF:
        raise ValueError(f"update-level DP protects WEIGHT_DIFF results, not {dxo.data_kind!r}")
    if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) is not None or not all(
        isinstance(v, np.ndarray | torch.Tensor) for v in dxo.data.values()
    ):
        raise ValueError(
            "the update is already encrypted (or not arrays), and DP noise must be added before HE encryption: "
            "put GaussianUpdateDP in the club's privacy.json scope, not in the job"
        )
    for name, value in dxo.data.items():
        if not (torch.is_floating_point(value) if isinstance(value, torch.Tensor) else value.dtype.kind == "f"):
            raise ValueError(f"update entry {name!r} has dtype {value.dtype}; update-level DP needs float values")


def _report_epsilon(dxo: DXO, epsilon: float, delta: float) -> None:
    """Put epsilon into the metrics the Client API sends (DXO meta ``initial_metrics``), for the run record.

    If DP-SGD already reported an epsilon for this job, the two add up (basic composition), and
    so do their deltas, so the reported figure stays an upper bound on a member's loss.
    """
    metrics = dict(dxo.get_meta_prop(MetaKey.INITIAL_METRICS) or {})
    metrics["privacy_epsilon_update_dp"] = epsilon
    if "privacy_epsilon" in metrics:
        metrics["privacy_epsilon_dp_sgd"] = metrics["privacy_epsilon"]
        epsilon += metrics["privacy_epsilon"]
        delta += metrics.get("privacy_delta", 0.0)
    metrics["privacy_epsilon"] = epsilon
    metrics["privacy_delta"] = delta
    dxo.set_meta_prop(MetaKey.INITIAL_METRICS, metrics)
