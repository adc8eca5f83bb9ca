"""Signing a club's round keys with its FLARE identity, and checking a signature against the federation's CA.

A provisioned kit holds the club's private key (``startup/client.key``), its certificate
(``client.crt``, common name = the club's name) and the federation's root CA (``rootCA.pem``).
A key advertisement is trusted only if its certificate was issued by that CA to the club that
claims it and the signature over the advertisement verifies with it.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

CLIENT_KEY = "client.key"
CLIENT_CERT = "client.crt"
ROOT_CA = "rootCA.pem"


class KeyRefused(ValueError):
    """A public key whose certificate or signature does not verify against the federation's CA."""


class ClubIdentity:
    """A club's FLARE private key and certificate, which sign its secure-aggregation keys each round."""

    def __init__(self, name: str, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, certificate: bytes):
        self.name = name
        self._key = private_key
        self.certificate = certificate

    @classmethod
    def from_kit(cls, startup: Path, name: str) -> ClubIdentity:
        """The identity in a provisioned kit's ``startup/`` folder."""
        try:
            key = serialization.load_pem_private_key((startup / CLIENT_KEY).read_bytes(), password=None)
            certificate = (startup / CLIENT_CERT).read_bytes()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"secure aggregation signs each club's keys with its FLARE identity, but {e.filename} is missing; "
                "run the club from a kit made by `nvflare provision` (the simulator has no identities)"
            ) from e
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise KeyRefused(f"{startup / CLIENT_KEY}: an RSA or EC key was expected")
        return cls(name, key, certificate)

    def sign(self, message: bytes) -> bytes:
        """Sign with RSA-PSS or ECDSA over SHA-256, whichever the kit's key is."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(message, _pss(), hashes.SHA256())
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_ca(path: Path) -> x509.Certificate:
    """The federation's root certificate (``startup/rootCA.pem`` in every kit)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"secure aggregation checks keys against the federation's CA, but {path} is missing; "
            "run from a kit made by `nvflare provision`"
        ) from e


def verify_signed(message: bytes, signature: bytes, certificate: bytes, *, ca: x509.Certificate, name: str) -> None:
    """Raise :class:`KeyRefused` unless ``certificate`` is the CA's for ``name`` and it signed ``message``."""
    try:
        cert = x509.load_pem_x509_certificate(certificate)
    except ValueError as e:
        raise KeyRefused(f"{name}: the certificate sent with its keys is not a PEM certificate") from e
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise KeyRefused(f"{name}: its certificate was not issued by this federation's CA") from e
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise KeyRefused(f"{name}: its certificate is not valid now (expired or not yet valid)")
    common_names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        raise KeyRefused(f"{name}: the certificate sent with its keys belongs to {common_names}, not to {name}")
    public = cert.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, _pss(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            raise KeyRefused(f"{name}: its certificate holds neither an RSA nor an EC key")
    except InvalidSignature as e:
        raise KeyRefused(
            f"{name}: the signature over its keys does not verify; the keys were forged or substituted"
        ) from e


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
