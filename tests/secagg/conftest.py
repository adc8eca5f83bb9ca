"""A federation CA and club identities made the way `nvflare provision` makes them (RSA keys, CN = club name)."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fitfed.secagg.identity import ClubIdentity


class Authority:
    """A root CA that issues club certificates."""

    def __init__(self, name: str = "fitfed_test"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = self._issue(name, self.key.public_key(), issuer=name, ca=True)

    def identity(self, club: str) -> ClubIdentity:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self._issue(club, key.public_key(), issuer=self.certificate.subject.rfc4514_string()[3:], ca=False)
        return ClubIdentity(club, key, cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, subject: str, public_key, *, issuer: str, ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )


@pytest.fixture(scope="session")
def authority() -> Authority:
    return Authority()


@pytest.fixture(scope="session")
def identities(authority: Authority) -> Callable[[int], dict[str, ClubIdentity]]:
    """``identities(n)``: n clubs' identities from the federation CA (cached: RSA keys are slow to make)."""
    made: dict[str, ClubIdentity] = {}

    def clubs(n: int) -> dict[str, ClubIdentity]:
        for i in range(1, n + 1):
            name = f"club_{i:02d}"
            if name not in made:
                made[name] = authority.identity(name)
        return {f"club_{i:02d}": made[f"club_{i:02d}"] for i in range(1, n + 1)}

    return clubs
