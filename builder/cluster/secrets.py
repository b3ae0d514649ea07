"""A cluster's secrets: the enrollment key node credentials derive from, the token endpoint's TLS key and
self-signed certificate (whose fingerprint images pin), and for several control planes the certificate key (kubeadm's
--certificate-key: 32 random bytes as 64 hex digits, which encrypt the kubeadm-certs Secret the joining control planes
take the cluster's CA and keys from). All 0600 in DIR/secrets (0700)."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

from firstboot import protocol
from firstboot.nodeconfig import CERTIFICATE_KEY
from firstboot.nodeconfig import SECRETS_DIR as SECRETS_DIR  # the cluster directory's too (Cluster.secrets_dir)

from ..errors import UserError
from ..outputs import write_atomic

ENROLLMENT_KEY, ENDPOINT_KEY, ENDPOINT_CERT = "enrollment.key", "endpoint.key", "endpoint.crt"
SECRET_FILES = (ENROLLMENT_KEY, ENDPOINT_KEY, ENDPOINT_CERT)


def create_secrets(secrets_dir: Path, endpoint_host: str) -> str:
    """Enrollment key and the endpoint's TLS key + self-signed certificate; returns the certificate's fingerprint."""
    from cryptography import x509  # here only: every build imports this module, only `cluster init` makes keys
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-image token endpoint")])
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(endpoint_host))
    except ValueError:
        alt_name = x509.DNSName(endpoint_host)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(secrets_dir / ENROLLMENT_KEY, secrets.token_hex(32) + "\n")
    write_atomic(secrets_dir / ENDPOINT_KEY, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    write_atomic(secrets_dir / ENDPOINT_CERT, certificate.public_bytes(serialization.Encoding.PEM).decode())
    return protocol.certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def create_certificate_key(secrets_dir: Path) -> Path:
    """A new certificate key in `secrets_dir` (0600), unless one is there: a cluster has one for its life."""
    path = secrets_dir / CERTIFICATE_KEY
    if not path.exists():
        write_atomic(path, secrets.token_hex(32) + "\n")
    return path


def read_enrollment_key(secrets_dir: Path) -> bytes:
    path = secrets_dir / ENROLLMENT_KEY
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the enrollment key ({err}); was the cluster created with "
                        "`pi-image cluster init`?") from None
