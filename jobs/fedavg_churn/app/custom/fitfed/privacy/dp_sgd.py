"""Sample-level differential privacy for local training: DP-SGD with Opacus.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): each step trains on a
Poisson-sampled batch (every row joins with probability ``sample_rate = batch_size / rows``),
clips every row's gradient to ``max_grad_norm`` and adds Gaussian noise. Opacus computes the
per-sample gradients (GradSampleModule), clips and noises them (DPOptimizer) and counts the steps
(its accountant). One :class:`DPTrainer` lives as long as the site's part in the job, so its
accountant counts every step of every round, and the club's ledger is charged before each round.

Note:
    Batch sampling and noise come from a torch generator that production seeds from the operating
    system: anyone who knows the seed (the job's ``seed`` is known to the server) could rebuild the
    noise and subtract it. Opacus's ``secure_mode`` (noise hardened against floating-point attacks)
    is off; it needs torchcsprng.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fitfed.config import TrainConfig
from fitfed.preprocessing import SiteSplit
from fitfed.privacy.accounting import epsilon_of, make_accountant
from fitfed.privacy.ledger import PrivacyLedger, Spend

MECHANISM = "dp_sgd"


class DPTrainer:
    """DP-SGD for one site: Poisson batches, Opacus's clipping and noise, one accountant for the whole job.

    Args:
        config: the job's training config; ``config.dp`` holds the DP settings.
        rows: the site's training rows.
        ledger: the club's privacy ledger: charged before every round, and the accountant continues
            from the steps it already holds for ``job_id`` (a restarted site does not count from zero).
        job_id: the training, as the ledger records it: the FLARE job, or the first job of a resumed training.
        run_job_id: the FLARE job running now, when it is not ``job_id`` (a continuation; see :mod:`fitfed.lineage`).
        seed: seeds batch sampling and noise, for tests only; None (production) seeds from the OS.

    Raises:
        ValueError: ``config.dp`` is not set, or the site has no training rows.

    Example:
        >>> dp = DPTrainer(config, rows=len(data.y_train))
        >>> train(model, data, config, round_seed=0, dp=dp)
        >>> dp.metrics()["privacy_epsilon"]
    """

    def __init__(
        self,
        config: TrainConfig,
        rows: int,
        *,
        ledger: PrivacyLedger | None = None,
        job_id: str = "",
        run_job_id: str | None = None,
        seed: int | None = None,
    ):
        if config.dp is None:
            raise ValueError("DPTrainer needs TrainConfig.dp (noise_multiplier, max_grad_norm) to be set")
        if rows < 1:
            raise ValueError(f"rows={rows!r}: DP-SGD needs at least one training row")
        self.config = config
        self.dp = config.dp
        self.rows = rows
        self.sample_rate = min(1.0, config.batch_size / rows)
        self.ledger = ledger
        self.job_id = job_id
        self.run_job_id = run_job_id
        taken = ledger.job_state(job_id, MECHANISM).steps if ledger is not None else 0
        self.accountant = make_accountant(self.dp.accountant, [(self.dp.noise_multiplier, self.sample_rate, taken)])
        self._charged_steps = taken
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)

    @property
    def steps(self) -> int:
        """Noised steps counted so far in this job."""
        return sum(steps for _, _, steps in self.accountant.history)

    def steps_per_round(self) -> int:
        """``local_steps`` exactly, or ``local_epochs`` x round(1 / sample_rate) (an epoch in expectation)."""
        if self.config.local_steps is not None:
            return self.config.local_steps
        return (self.config.local_epochs or 1) * max(1, round(1 / self.sample_rate))

    def epsilon(self, delta: float | None = None, extra_steps: int = 0) -> float:
        """This job's epsilon at ``delta`` (default: target_delta), after ``extra_steps`` more steps."""
        extra = (self.dp.noise_multiplier, self.sample_rate, extra_steps)
        return epsilon_of([*self.accountant.history, extra], delta or self.dp.target_delta, self.dp.accountant)

    def metrics(self) -> dict[str, float]:
        """What each round reports: this job's epsilon so far, at target_delta."""
        return {"privacy_epsilon": self.epsilon(), "privacy_delta": self.dp.target_delta}

    def charge_round(self, round_number: int) -> None:
        """Charge the club's ledger for the coming round's steps, before any is taken.

        Raises:
            PrivacyBudgetExceeded: the round would exceed the club's budget; do not train.
            RuntimeError: steps were taken that no round paid for.
        """
        if self.steps > self._charged_steps:
            raise RuntimeError(f"{self.steps} DP-SGD steps taken but only {self._charged_steps} charged")
        # From what was charged, not what was taken: a charged round whose training failed stays paid for.
        charged = self._charged_steps + self.steps_per_round()
        if self.ledger is not None:
            delta = self.ledger.budget.delta if self.ledger.budget is not None else self.dp.target_delta
            spend = Spend(
                job_id=self.job_id,
                mechanism=MECHANISM,
                round=round_number,
                epsilon_job=self.epsilon(delta, extra_steps=charged - self.steps),
                delta=delta,
                noise_multiplier=self.dp.noise_multiplier,
                sample_rate=self.sample_rate,
                steps_job=charged,
                run_job_id=self.run_job_id,
            )
            self.ledger.charge(spend)
        self._charged_steps = charged

    def batches(self, data: SiteSplit) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One round of Poisson-sampled batches (some may be empty), as the accountant assumes."""
        sampler = UniformWithReplacementSampler(
            num_samples=self.rows, sample_rate=self.sample_rate, generator=self.generator, steps=self.steps_per_round()
        )
        for indices in sampler:
            index = torch.tensor(indices, dtype=torch.long)
            yield data.x_train[index], data.y_train[index]

    @contextmanager
    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, penalty: Callable[[], torch.Tensor] | None = None
    ) -> Iterator[DPOptimizer]:
        """For one round: per-sample gradients on ``model``, and ``optimizer`` made private and counted.

        Args:
            model: trained in place; Opacus's hooks are removed again on exit.
            optimizer: the round's optimizer.
            penalty: a loss term that depends on no member's data (FedProx's); its gradient is
                added after the noise, since Opacus would otherwise drop it.
        """
        wrapped = GradSampleModule(model)
        private = _DPOptimizer(
            optimizer,
            noise_multiplier=self.dp.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=round(self.sample_rate * self.rows),
            generator=self.generator,
            penalty=penalty,
        )
        private.attach_step_hook(self._count_step)
        try:
            yield private
        finally:
            wrapped.cleanup()

    def state_dict(self) -> dict[str, object]:
        """The accountant's state (Opacus format), to persist it outside this process."""
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore an accountant saved by :meth:`state_dict`."""
        self.accountant.load_state_dict(state)

    def _count_step(self, _optimizer: DPOptimizer) -> None:
        self.accountant.step(noise_multiplier=self.dp.noise_multiplier, sample_rate=self.sample_rate)


class _DPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer, plus a data-independent penalty whose gradient joins after the noise."""

    def __init__(self, *args: object, penalty: Callable[[], torch.Tensor] | None, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.penalty = penalty

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Clip, noise and count (Opacus), then add the penalty's gradient to the noised one."""
        if not super().pre_step(closure):
            return False
        if self.penalty is not None:
            self.penalty().backward()
        return True
