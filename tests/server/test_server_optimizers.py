"""FedYogi's server optimizer, and how a FedOpt job names and ships it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from fitfed.jobs import JobSettings, ServerOptimizer, build_recipe, export_into
from fitfed.server.optimizers import Yogi
from jobs.conftest import job_module


def test_yogi_steps_follow_the_paper_by_hand():
    # Prepare: one parameter, two server steps with known pseudo-gradients (FLARE sets grad = -update)
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = Yogi([param], lr=0.1, betas=(0.5, 0.75), eps=0.01)
    m, v, expected = torch.zeros(2), torch.zeros(2), param.detach().clone()

    for grad in (torch.tensor([0.4, -0.2]), torch.tensor([0.1, 0.3])):
        # Execute
        param.grad = grad.clone()
        optimizer.step()

        # Assert: m <- b1 m + (1-b1) g; v <- v - (1-b2) g^2 sign(v - g^2); p <- p - lr m / (sqrt(v) + eps)
        m = 0.5 * m + 0.5 * grad
        v = v - 0.25 * grad**2 * torch.sign(v - grad**2)
        expected = expected - 0.1 * m / (v.sqrt() + 0.01)
        torch.testing.assert_close(param.detach(), expected)


def test_yogi_second_moment_grows_additively_unlike_adam():
    # Prepare: after small gradients, one gradient 100x larger
    yogi_param = torch.nn.Parameter(torch.zeros(1))
    yogi = Yogi([yogi_param], lr=1.0, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(20):
        yogi_param.grad = torch.full((1,), 0.01)
        yogi.step()
    v_before = yogi.state[yogi_param]["v"].clone()

    # Execute
    yogi_param.grad = torch.full((1,), 1.0)
    yogi.step()

    # Assert: v rose by exactly (1 - b2) g^2, the additive Yogi rule (Adam would multiply v by b2 first)
    torch.testing.assert_close(yogi.state[yogi_param]["v"], v_before + 0.01 * 1.0)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"eps": 0.0}, {"betas": (0.9, 1.0)}])
def test_yogi_refuses_invalid_settings(kwargs):
    with pytest.raises(ValueError, match="Yogi needs"):
        Yogi([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_server_optimizer_is_required_exactly_for_fedopt():
    fedopt = job_module("fedopt_churn").SETTINGS
    with pytest.raises(ValidationError, match="server_optimizer must be set exactly"):
        JobSettings.model_validate({**dict(fedopt), "server_optimizer": None})
    fedavg = job_module("fedavg_churn").SETTINGS
    with pytest.raises(ValidationError, match="server_optimizer must be set exactly"):
        JobSettings.model_validate({**dict(fedavg), "server_optimizer": ServerOptimizer(lr=0.1)})


def test_fedyogi_job_names_and_ships_fitfeds_yogi(tmp_path: Path):
    # Prepare: the FedOpt job with Yogi on the server
    module = job_module("fedopt_churn")
    yogi = ServerOptimizer(name="yogi", lr=0.03, betas=(0.9, 0.999), eps=1e-3)
    settings = JobSettings.model_validate({**dict(module.SETTINGS), "server_optimizer": yogi})

    # Execute
    folder = export_into(build_recipe(module, settings), tmp_path)

    # Assert: the server's config names the class with these arguments, and the class travels with the job
    text = (folder / "app" / "config" / "config_fed_server.json").read_text()
    assert '"fitfed.server.optimizers.Yogi"' in text
    optimizer = _find(json.loads(text), "optimizer_args")
    assert optimizer["args"] == {"lr": 0.03, "betas": [0.9, 0.999], "eps": 1e-3}
    assert (folder / "app" / "custom" / "fitfed" / "server" / "optimizers.py").is_file()


def _find(node, key):
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    for child in node if isinstance(node, list) else []:
        found = _find(child, key)
        if found is not None:
            return found
    return None
