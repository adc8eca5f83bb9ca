"""The checkpoint holds each workflow's own state, and a continuation gets that state back exactly."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from nvflare.apis.fl_context import FLContext

from fitfed.server.checkpoint import checkpoint_path, read_checkpoint
from fitfed.server.resume import RoundCheckpointer


class _Engine:
    def __init__(self, components: dict[str, object]):
        self.components = components

    def get_component(self, name: str) -> object:
        return self.components.get(name)


def _context(engine: _Engine) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.get_engine = lambda: engine  # type: ignore[method-assign]
    return fl_ctx


def _fedopt_server(tmp_path: Path, steps: int) -> tuple[dict[str, object], torch.optim.Optimizer]:
    """A FedOpt server after ``steps`` rounds: Adam's moments, the persisted model, the best model and metric."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 3)).sum().backward()
        optimizer.step()
    torch.save({"model": model.state_dict()}, tmp_path / "FL_global_model.pt")
    torch.save({"model": model.state_dict()}, tmp_path / "best_FL_global_model.pt")
    persistor = SimpleNamespace(
        model=model,
        _ckpt_save_path=str(tmp_path / "FL_global_model.pt"),
        _best_ckpt_save_path=str(tmp_path / "best_FL_global_model.pt"),
    )
    generator = SimpleNamespace(optimizer=optimizer, lr_scheduler=None)
    components = {
        "persistor": persistor,
        "shareable_generator": generator,
        "controller": SimpleNamespace(current_round=steps - 1, start_round=0, num_rounds=10),
        "model_selector": SimpleNamespace(best_val_metric=0.75),
    }
    return components, optimizer


def test_fedopt_optimizer_state_and_the_best_model_survive_a_checkpoint(tmp_path: Path):
    # Arrange: a FedOpt server 3 rounds in, checkpointed as after a persisted round
    components, optimizer = _fedopt_server(tmp_path, steps=3)
    writer = RoundCheckpointer()
    writer._record = tmp_path / "record"
    writer._manifest = {"job_id": "a", "lineage_root": "a", "num_rounds": 10, "controller": "X", "config_sha256": "c"}

    # Execute
    writer._checkpoint(_context(_Engine(components)))
    manifest, state = read_checkpoint(checkpoint_path(tmp_path / "record"))

    # Assert: round, best metric and Adam's moments are in it
    assert manifest.rounds_completed == 3 and manifest.best_metric == 0.75
    assert state["fedopt_optimizer"]["state"][0]["step"] == 3

    # Execute: a fresh server (as a continuation builds it) gets the state back
    (tmp_path / "fresh").mkdir()
    fresh, fresh_optimizer = _fedopt_server(tmp_path / "fresh", steps=1)
    fresh["model_selector"].best_val_metric = float("-inf")
    reader = RoundCheckpointer()
    reader._restore = {**state, "best_metric": manifest.best_metric}
    reader._restore_controller_state(_context(_Engine(fresh)))

    # Assert: the optimizer continues exactly where it was; the best model and metric are back
    restored = fresh_optimizer.state_dict()["state"]
    for index, moments in optimizer.state_dict()["state"].items():
        assert torch.equal(restored[index]["exp_avg"], moments["exp_avg"])
        assert torch.equal(restored[index]["exp_avg_sq"], moments["exp_avg_sq"])
        assert float(restored[index]["step"]) == 3
    assert fresh["model_selector"].best_val_metric == 0.75
    best = torch.load(tmp_path / "fresh" / "best_FL_global_model.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], v) for k, v in state["best_weights"].items())


def test_scaffold_server_controls_survive_a_checkpoint(tmp_path: Path):
    # Arrange: a SCAFFOLD server whose control variate is not zero
    components, _ = _fedopt_server(tmp_path, steps=2)
    components["shareable_generator"] = None
    components["controller"]._global_ctrl_weights = {"weight": torch.full((1, 3), 0.5), "bias": torch.tensor([2.0])}
    writer = RoundCheckpointer()
    writer._record = tmp_path / "record"
    writer._manifest = {"job_id": "a", "lineage_root": "a", "num_rounds": 10, "controller": "X", "config_sha256": "c"}
    writer._checkpoint(_context(_Engine(components)))
    manifest, state = read_checkpoint(checkpoint_path(tmp_path / "record"))

    # Execute: a fresh controller, whose variate FLARE initialises to zero, gets it back
    controller = SimpleNamespace(_global_ctrl_weights={"weight": torch.zeros(1, 3), "bias": torch.zeros(1)})
    reader = RoundCheckpointer()
    reader._restore = {**state, "best_metric": None}
    reader._restore_controller_state(_context(_Engine({**components, "controller": controller})))

    # Assert
    assert "fedopt_optimizer" not in state
    assert torch.equal(controller._global_ctrl_weights["weight"], torch.full((1, 3), 0.5))
    assert torch.equal(controller._global_ctrl_weights["bias"], torch.tensor([2.0]))
