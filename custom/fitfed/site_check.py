"""Is a club's startup kit ready to start? The checks partner IT runs before joining.

Each check answers one question with a line a person can act on: certificates present and
valid, the server reachable, the club's data valid for the task, the privacy policy usable, and
the HE context (if any) precise enough.
"""

from __future__ import annotations

import datetime
import importlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fitfed.config import load_site_config, site_data_path
from fitfed.privacy.he import CLIENT_CONTEXT_FILE, check_context, load_context
from fitfed.privacy.update_dp import GaussianUpdateDP
from fitfed.spec import TaskSpec
from fitfed.validation import SiteDataError, read_site_csv


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str


def check_kit(kit: Path, spec: TaskSpec) -> list[CheckResult]:
    """Run every check on a club's kit folder (the one holding ``startup/`` and ``local/``)."""
    if not (kit / "startup" / "fed_client.json").is_file():
        return [CheckResult("kit", False, f"{kit} has no startup/fed_client.json: point at the club's kit folder")]
    return [check_certificates(kit), check_server(kit), check_data(kit, spec), check_privacy(kit), check_he(kit)]


def check_certificates(kit: Path) -> CheckResult:
    """The club's certificate exists, is within its validity period and was issued by the federation's CA."""
    startup = kit / "startup"
    missing = [f for f in ("client.crt", "client.key", "rootCA.pem") if not (startup / f).is_file()]
    if missing:
        return CheckResult("certificates", False, f"missing {missing} in {startup}: ask the federation admin")
    cert = x509.load_pem_x509_certificate((startup / "client.crt").read_bytes())
    root = x509.load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return CheckResult("certificates", False, f"client.crt is valid only until {cert.not_valid_after_utc:%Y-%m-%d}")
    if not _issued_by(cert, root):
        return CheckResult("certificates", False, "client.crt was not issued by this kit's rootCA.pem")
    days = (cert.not_valid_after_utc - now).days
    return CheckResult("certificates", True, f"issued by the federation CA, valid for {days} more day(s)")


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    key = root.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def check_server(kit: Path, timeout: float = 3.0) -> CheckResult:
    """The server's federated-learning port accepts a connection from here."""
    config = json.loads((kit / "startup" / "fed_client.json").read_text())
    target = config["servers"][0]["service"]["target"]
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        return CheckResult(
            "server", False, f"cannot reach {target} ({e.strerror or e}): is it running, is the port open?"
        )
    return CheckResult("server", True, f"{target} accepts connections")


def check_data(kit: Path, spec: TaskSpec) -> CheckResult:
    """The club's data file is where its configuration says, and meets the task spec."""
    try:
        path = site_data_path(kit.name, workspace_root=kit)
        table = read_site_csv(path, spec)
    except (FileNotFoundError, SiteDataError) as e:
        return CheckResult("data", False, str(e))
    return CheckResult("data", True, f"{path}: {len(table.frame)} usable row(s) for the '{spec.name}' task")


def check_privacy(kit: Path) -> CheckResult:
    """``local/privacy.json`` parses, names its default scope, and every filter it lists can be loaded here."""
    path = kit / "local" / "privacy.json"
    if not path.is_file():
        return CheckResult("privacy", False, f"{path} missing: copy provisioning/site_templates/privacy.json there")
    try:
        policy = json.loads(path.read_text())
        scopes = {scope["name"]: scope for scope in policy["scopes"]}
        default = policy["default_scope"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return CheckResult("privacy", False, f"{path} is not a FLARE privacy policy ({type(e).__name__}: {e})")
    if default not in scopes:
        return CheckResult("privacy", False, f"{path}: default_scope {default!r} is not one of {sorted(scopes)}")
    for name, scope in scopes.items():
        for entry in scope.get("task_result_filters", []) + scope.get("task_data_filters", []):
            problem = _unloadable(entry.get("path", "")) or _unbudgeted(kit, entry.get("path", ""))
            if problem:
                return CheckResult("privacy", False, f"{path}: scope {name!r}: {problem}")
    return CheckResult("privacy", True, f"scopes {sorted(scopes)}, default {default!r}")


def check_he(kit: Path) -> CheckResult:
    """The kit's HE context, if it has one, is precise enough for model weights (HE jobs refuse it otherwise)."""
    path = kit / "startup" / CLIENT_CONTEXT_FILE
    if not path.is_file():
        return CheckResult("he", True, "no HE context in this kit: HE jobs cannot run here (plain jobs can)")
    try:
        error = check_context(load_context(path), str(path))
    except ValueError as e:
        return CheckResult("he", False, f"{e}; ask the federation admin to re-provision")
    return CheckResult("he", True, f"HE context holds this club's key; aggregation error {error:.0e}")


def _unbudgeted(kit: Path, class_path: str) -> str | None:
    """A DP filter needs the club's privacy budget to charge; without one it refuses every round."""
    if class_path.rsplit(".", 1)[-1] != GaussianUpdateDP.__name__:
        return None
    try:
        config = load_site_config(kit)
    except (ValueError, OSError) as e:
        return f"its DP filter needs a readable local/fitfed_site.yaml ({e})"
    if config is None or config.privacy_budget is None:
        return (
            "its DP filter charges a privacy budget, but local/fitfed_site.yaml sets none: add "
            "privacy_budget: {epsilon: ..., delta: ...} (see provisioning/site_templates/fitfed_site.yaml)"
        )
    return None


def _unloadable(class_path: str) -> str | None:
    module, _, name = class_path.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return f"filter {class_path!r} cannot be loaded here: install the package that provides it"
    return None
