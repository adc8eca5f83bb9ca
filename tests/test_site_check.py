from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import tenseal as ts
import yaml

from fitfed.datasets.churn import write_clubs
from fitfed.provision import load_roster, write_project
from fitfed.site_check import check_kit
from fitfed.spec import load_spec
from test_provision import nvflare_provision

REPO = Path(__file__).resolve().parents[1]


def _provision(root: Path, port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((REPO / "provisioning" / "roster.example.yaml").read_text())
    raw["server"]["fed_learn_port"], raw["server"]["admin_port"] = port, port + 1
    (root / "roster.yaml").write_text(yaml.safe_dump(raw))
    nvflare_provision(write_project(load_roster(root / "roster.yaml"), root / "project.yml"), root / "ws")
    return root / "ws" / "fitfed_clubs" / "prod_00"


@pytest.fixture(scope="module")
def listening_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def kit(tmp_path: Path, listening_port: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FITFED_DATA", raising=False)
    kits = _provision(tmp_path, listening_port)
    club = kits / "club_01"
    write_clubs(tmp_path / "data", 1, seed=0)
    shutil.copy(REPO / "provisioning" / "site_templates" / "privacy.json", club / "local")
    site = {"data_path": str(tmp_path / "data" / "club_01.csv"), "privacy_budget": {"epsilon": 10.0, "delta": 1e-5}}
    (club / "local" / "fitfed_site.yaml").write_text(yaml.safe_dump(site))
    return club


def _by_name(kit: Path) -> dict[str, tuple[bool, str]]:
    return {r.name: (r.ok, r.detail) for r in check_kit(kit, load_spec("churn"))}


def test_ready_kit_passes_every_check(kit: Path):
    results = _by_name(kit)
    assert all(ok for ok, _ in results.values()), results
    assert "valid for" in results["certificates"][1]
    assert "usable row(s)" in results["data"][1]


def test_certificate_from_another_federation_fails(kit: Path, tmp_path: Path):
    other = _provision(tmp_path / "other", 9000)
    shutil.copy(other / "club_01" / "startup" / "rootCA.pem", kit / "startup" / "rootCA.pem")
    ok, detail = _by_name(kit)["certificates"]
    assert not ok and "not issued by this kit's rootCA.pem" in detail


def test_unreachable_server_fails(kit: Path):
    config = json.loads((kit / "startup" / "fed_client.json").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config["servers"][0]["service"]["target"] = f"localhost:{closed_port}"
    (kit / "startup" / "fed_client.json").write_text(json.dumps(config))
    ok, detail = _by_name(kit)["server"]
    assert not ok and f"cannot reach localhost:{closed_port}" in detail


def test_invalid_data_fails_with_the_validation_message(kit: Path, tmp_path: Path):
    csv = tmp_path / "data" / "club_01.csv"
    csv.write_text(csv.read_text().replace(",", ";"))
    ok, detail = _by_name(kit)["data"]
    assert not ok and "separated by semicolons" in detail


def test_missing_data_configuration_fails(kit: Path):
    (kit / "local" / "fitfed_site.yaml").unlink()
    ok, detail = _by_name(kit)["data"]
    assert not ok and "has no data location" in detail


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{not json", "is not a FLARE privacy policy"),
        ('{"scopes": [{"name": "a"}], "default_scope": "b"}', "default_scope 'b' is not one of ['a']"),
        ('{"scopes": [{"name": "a", "task_result_filters": [{"path": "nowhere.Filter"}]}], "default_scope": "a"}',
         "filter 'nowhere.Filter' cannot be loaded here"),
    ],
)  # fmt: skip
def test_broken_privacy_policy_fails(kit: Path, policy: str, message: str):
    (kit / "local" / "privacy.json").write_text(policy)
    ok, detail = _by_name(kit)["privacy"]
    assert not ok and message in detail


def test_not_a_kit(tmp_path: Path):
    (result,) = check_kit(tmp_path, load_spec("churn"))
    assert not result.ok and "has no startup/fed_client.json" in result.detail


def test_weak_he_context_fails(kit: Path):
    # Setup: a kit whose HE context was made outside fitfed with too small a scale
    weak = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[30, 20, 30])
    weak.global_scale = 2**20
    (kit / "startup" / "client_context.tenseal").write_bytes(weak.serialize(save_secret_key=True))

    # Execute / Assert
    ok, detail = _by_name(kit)["he"]
    assert not ok and "too weak" in detail and "re-provision" in detail


def test_provisioned_he_context_passes(kit: Path):
    ok, detail = _by_name(kit)["he"]
    assert ok and "aggregation error" in detail


def test_strict_scope_without_a_privacy_budget_fails(kit: Path):
    # Setup: the data location only, as before the club set its budget
    site = kit / "local" / "fitfed_site.yaml"
    site.write_text(yaml.safe_dump({"data_path": yaml.safe_load(site.read_text())["data_path"]}))

    # Execute / Assert
    ok, detail = _by_name(kit)["privacy"]
    assert not ok and "scope 'strict'" in detail and "privacy_budget" in detail
