from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fitfed.provision import RosterError, load_roster, render_project, write_project

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "provisioning" / "roster.example.yaml"


def nvflare_provision(project: Path, workspace: Path, *extra: str) -> None:
    """Plain `nvflare provision`, as the federation admin runs it, with a throwaway HOME."""
    subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project), "-w", str(workspace), *extra],
        check=True,
        capture_output=True,
        cwd=project.parent,
        env={"HOME": str(project.parent), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def _roster_file(tmp_path: Path, **changes: object) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(changes)
    path = tmp_path / "roster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_committed_project_yml_is_the_rendered_example_roster(tmp_path: Path):
    # Execute
    rendered = write_project(load_roster(EXAMPLE), tmp_path / "project.yml")

    # Assert
    assert rendered.read_text() == (REPO / "provisioning" / "project.yml").read_text(), (
        "provisioning/project.yml drifted: run `fitfed provision init --roster provisioning/roster.example.yaml`"
    )


def test_render_has_every_participant_with_roles_and_he_builder():
    # Execute
    project = render_project(load_roster(EXAMPLE))

    # Assert
    by_name = {p["name"]: p for p in project["participants"]}
    assert by_name["localhost"]["type"] == "server" and by_name["localhost"]["admin_port"] == 8003
    assert {n for n, p in by_name.items() if p["type"] == "client"} == {"club_01", "club_02", "club_03"}
    assert by_name["it@northside.example"]["role"] == "org_admin"
    assert by_name["observer@federation.example"]["role"] == "member"
    builders = [b["path"].rsplit(".", 1)[1] for b in project["builders"]]
    assert builders == ["WorkspaceBuilder", "StaticFileBuilder", "CertBuilder", "HEBuilder", "SignatureBuilder"]


def test_nvflare_provision_builds_kits_with_he_contexts(tmp_path: Path):
    # Prepare
    project = write_project(load_roster(EXAMPLE), tmp_path / "project.yml")

    # Execute
    nvflare_provision(project, tmp_path / "ws")

    # Assert
    kits = tmp_path / "ws" / "fitfed_clubs" / "prod_00"
    assert (kits / "localhost" / "startup" / "server_context.tenseal").is_file()
    for club in ("club_01", "club_02", "club_03"):
        assert (kits / club / "startup" / "client_context.tenseal").is_file()
        assert (kits / club / "startup" / "client.crt").is_file()
    assert (kits / "lead@federation.example" / "startup" / "fed_admin.json").is_file()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clubs": [{"name": "club_01", "org": "northside"}, {"name": "club_01", "org": "riverside"}]},
         r"repeated: \['club_01'\]"),
        ({"server": {"host": "bad host!", "org": "federation"}}, r"host='bad host!' is not a hostname or IP address"),
        ({"people": [{"email": "a@b.example", "org": "federation", "role": "superuser"}]},
         r"role='superuser' is not a FLARE role"),
        ({"clubs": [{"name": "club_09", "org": "nobody"}]}, r"club\(s\) \['club_09'\] have no org_admin"),
        ({"people": [{"email": "it@northside.example", "org": "northside", "role": "org_admin"},
                     {"email": "it@riverside.example", "org": "riverside", "role": "org_admin"},
                     {"email": "it@hilltop.example", "org": "hilltop", "role": "org_admin"}]},
         r"people needs a project_admin"),
        ({"server": {"host": "fl.example.org", "org": "f", "fed_learn_port": 9000, "admin_port": 9000}},
         r"fed_learn_port and server.admin_port are both 9000"),
        ({"federation": "Bad Name"}, r"federation: String should match pattern"),
    ],
)  # fmt: skip
def test_bad_roster_is_refused_naming_file_and_field(tmp_path: Path, changes: dict, message: str):
    path = _roster_file(tmp_path, **changes)
    with pytest.raises(RosterError, match=message) as error:
        load_roster(path)
    assert str(path) in str(error.value)


def test_missing_and_malformed_roster_files(tmp_path: Path):
    with pytest.raises(RosterError, match="no such roster file"):
        load_roster(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("federation: [unclosed")
    with pytest.raises(RosterError, match="not valid YAML"):
        load_roster(bad)


def test_adding_a_club_later_keeps_the_federation_ca(tmp_path: Path):
    # Prepare: a federation provisioned once
    def provision(roster_raw: dict) -> None:
        (tmp_path / "roster.yaml").write_text(yaml.safe_dump(roster_raw))
        project = write_project(load_roster(tmp_path / "roster.yaml"), tmp_path / "project.yml")
        nvflare_provision(project, tmp_path / "ws", "--force")

    raw = yaml.safe_load(EXAMPLE.read_text())
    provision(raw)

    # Execute: the roster gains a club and its IT contact; provision again into the same workspace
    raw["clubs"].append({"name": "club_04", "org": "lakeside"})
    raw["people"].append({"email": "it@lakeside.example", "org": "lakeside", "role": "org_admin"})
    provision(raw)

    # Assert: a new kit for the new club, signed by the same root CA as the first kits
    root = tmp_path / "ws" / "fitfed_clubs"
    first_ca = (root / "prod_00" / "club_01" / "startup" / "rootCA.pem").read_bytes()
    assert (root / "prod_01" / "club_04" / "startup" / "rootCA.pem").read_bytes() == first_ca
    assert (root / "prod_01" / "club_04" / "startup" / "client.crt").is_file()
