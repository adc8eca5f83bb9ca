"""A FLARE task-result filter that poisons chosen sites' updates in NVFlare's simulator (tests/benchmarks only).

It runs on every client after training and before the update leaves the site; it changes only the
updates of the sites named in its plan, and only weight differences (the form fitfed's robust
aggregators receive), so it sees exactly what the attacker would send.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from attack_harness.poison import AttackConfig, attack_rng, poison_update


class UpdateAttackFilter(Filter):
    """Replace the named sites' weight differences with poisoned ones.

    Args:
        plan: site name -> an :class:`AttackConfig` as a dict; sites not named send honest updates.
    """

    def __init__(self, plan: dict[str, dict[str, Any]]):
        super().__init__()
        self.plan = dict(plan)
        self._attacks = {site: AttackConfig.model_validate(attack) for site, attack in self.plan.items()}

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Poison this site's update if the plan names it with an update attack."""
        site = fl_ctx.get_identity_name()
        attack = self._attacks.get(site)
        if attack is None or not attack.poisons_update:
            return shareable
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            raise ValueError(
                f"attack harness: site {site!r} sends {dxo.data_kind}, expected {DataKind.WEIGHT_DIFF}; build the job "
                "with a JobSettings.aggregator (use {'method': 'fedavg'} for the FedAvg baseline)"
            )
        round_number = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0)
        numpy_update = {k: _to_numpy(v) for k, v in dxo.data.items()}
        poisoned = poison_update(numpy_update, attack, attack_rng(attack, site, round_number))
        dxo.data = {k: torch.from_numpy(v) if isinstance(dxo.data[k], torch.Tensor) else v for k, v in poisoned.items()}
        self.log_warning(
            fl_ctx, f"ATTACK HARNESS: site {site!r} sends a {attack.label()} update in round {round_number}"
        )
        return dxo.update_shareable(shareable)


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
