"""Server optimizers for FedOpt that torch lacks: Yogi (Reddi et al., "Adaptive Federated Optimization", 2021).

FLARE's FedOpt sets each parameter's ``grad`` to minus the averaged club update and calls the
optimizer's ``step()``, so any torch optimizer is a FedOpt server rule. Torch ships Adam and
Adagrad; FedYogi needs Yogi, whose second moment moves additively, so one large update cannot
blow up the effective step the way it does in Adam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class Yogi(torch.optim.Optimizer):
    """Yogi, as FedYogi uses it: no bias correction, ``eps`` is the paper's adaptivity tau.

    Args:
        params: the global model's parameters.
        lr: the server learning rate (eta).
        betas: decay of the first and second moments.
        eps: tau, added to the root of the second moment.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-3) -> None:  # fmt: skip
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Yogi needs lr > 0, eps > 0 and betas in [0, 1); got lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One server step: m <- b1 m + (1-b1) g; v <- v - (1-b2) g² sign(v - g²); p <- p - lr m / (sqrt(v) + eps)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["m"] = torch.zeros_like(param)
                    state["v"] = torch.zeros_like(param)
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                squared = grad * grad
                v.sub_((1 - beta2) * squared * torch.sign(v - squared))
                param.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss
