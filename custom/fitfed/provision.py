"""A club federation's roster, validated, and the NVFlare ``project.yml`` it renders.

Federation admins describe who takes part in a short roster; fitfed checks it (names, hosts,
roles, an org admin for every club) and writes the complete ``project.yml`` that plain
``nvflare provision`` turns into startup kits, TenSEAL HE contexts included.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fitfed.privacy.he import HEParameters, check_parameters

Role = Literal["project_admin", "org_admin", "lead", "member"]
ROLES: tuple[str, ...] = ("project_admin", "org_admin", "lead", "member")
_NAME = r"^[a-z][a-z0-9_]*$"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class RosterError(ValueError):
    """A roster that cannot become a federation; the message names the roster file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerEntry(_Strict):
    """Where clubs and admins reach the federation server."""

    host: str
    org: str
    fed_learn_port: int = Field(default=8002, ge=1, le=65535)
    admin_port: int = Field(default=8003, ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, host: str) -> str:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        if not _HOSTNAME.match(host):
            raise ValueError(f"host={host!r} is not a hostname or IP address (e.g. fl.example.org or 10.0.0.5)")
        return host


class ClubEntry(_Strict):
    """One site: its FLARE client name (snake_case) and the organisation that runs it."""

    name: str = Field(pattern=_NAME)
    org: str


class PersonEntry(_Strict):
    """Someone with an admin-console login, their organisation and FLARE role."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    org: str
    role: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"role={role!r} is not a FLARE role; use one of {list(ROLES)}")
        return role


class HESettings(_Strict):
    """TenSEAL CKKS parameters for NVFlare's HEBuilder (every client receives the same secret key).

    Parameters too imprecise for model weights are refused here, before any kit exists
    (see :func:`fitfed.privacy.he.check_parameters`).
    """

    enabled: bool = True
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: list[int] = [60, 40, 40]
    scale_bits: int = 40

    @model_validator(mode="after")
    def _strong_enough(self) -> HESettings:
        if self.enabled:
            check_parameters(HEParameters.model_validate(self.model_dump(exclude={"enabled"})))
        return self


class Roster(_Strict):
    """A club federation.

    Args:
        federation: the FLARE project name.
        description: one line for humans.
        server: where the server listens.
        clubs: the sites.
        people: admin-console users with their roles.
        he: homomorphic-encryption contexts in the kits.
    """

    federation: str = Field(pattern=_NAME)
    description: str = ""
    server: ServerEntry
    clubs: list[ClubEntry] = Field(min_length=1)
    people: list[PersonEntry] = Field(min_length=1)
    he: HESettings = HESettings()

    @model_validator(mode="after")
    def _consistent(self) -> Roster:
        names = [self.server.host] + [c.name for c in self.clubs] + [p.email for p in self.people]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names must be unique across server, clubs and people; repeated: {duplicates}")
        if self.server.fed_learn_port == self.server.admin_port:
            raise ValueError(f"server.fed_learn_port and server.admin_port are both {self.server.admin_port}")
        org_admins = {p.org for p in self.people if p.role == "org_admin"}
        orphans = [c.name for c in self.clubs if c.org not in org_admins]
        if orphans:
            raise ValueError(f"club(s) {orphans} have no org_admin in people: add their IT contact with role org_admin")
        if not any(p.role == "project_admin" for p in self.people):
            raise ValueError("people needs a project_admin (the federation admin)")
        return self


def load_roster(path: Path) -> Roster:
    """Read and validate a roster YAML file.

    Raises:
        RosterError: naming the file and every field that is wrong.
    """
    if not path.is_file():
        raise RosterError(f"{path}: no such roster file; start from provisioning/roster.example.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RosterError(f"{path}: not valid YAML ({e})") from None
    try:
        return Roster.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'roster'}: {err['msg']}" for err in e.errors())
        raise RosterError(f"{path}: {problems}") from None


def render_project(roster: Roster) -> dict[str, Any]:
    """The NVFlare ``project.yml`` (api_version 3) for this roster."""
    participants: list[dict[str, Any]] = [
        {
            "name": roster.server.host,
            "type": "server",
            "org": roster.server.org,
            "fed_learn_port": roster.server.fed_learn_port,
            "admin_port": roster.server.admin_port,
        }
    ]
    participants += [{"name": c.name, "type": "client", "org": c.org} for c in roster.clubs]
    participants += [{"name": p.email, "type": "admin", "org": p.org, "role": p.role} for p in roster.people]
    builders: list[dict[str, Any]] = [
        {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder"},
        {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
        {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    ]
    if roster.he.enabled:
        he_args = roster.he.model_dump(exclude={"enabled"})
        builders.append({"path": "nvflare.lighter.impl.he.HEBuilder", "args": he_args})
    builders.append({"path": "nvflare.lighter.impl.signature.SignatureBuilder"})
    return {
        "api_version": 3,
        "name": roster.federation,
        "description": roster.description or f"{roster.federation}: a fitfed club federation",
        "participants": participants,
        "builders": builders,
    }


def write_project(roster: Roster, out: Path) -> Path:
    """Write the rendered project.yml, with a header saying where it came from."""
    header = "# Rendered by `fitfed provision init` from a roster; edit the roster, not this file.\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(render_project(roster), sort_keys=False))
    return out
