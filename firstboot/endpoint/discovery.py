"""kubeadm's discovery-token CA cert hash, computed with the standard library.

The hash is 'sha256:' + hex SHA-256 of the CA certificate's DER SubjectPublicKeyInfo. The seed's
`openssl rsa -pubin` pipeline only worked for RSA CAs; reading the SPKI out of the certificate's DER works for any key
type (RSA, ECDSA), so this walks just enough of the X.509 structure to cut it out.
"""

import hashlib
import re
import ssl

_PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_SEQUENCE = 0x30
_VERSION_TAG = 0xA0  # [0] EXPLICIT version, absent in v1 certificates


def _element(der, pos):
    """(tag, content_start, end) of the DER element starting at `pos`; ValueError if it does not fit."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start:start + count], "big")
        start += count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def subject_public_key_info(cert_der):
    """The DER bytes (tag and length included) of a certificate's SubjectPublicKeyInfo."""
    tag, cert_start, _ = _element(cert_der, 0)
    tbs_tag, pos, _ = _element(cert_der, cert_start)
    if tag != _SEQUENCE or tbs_tag != _SEQUENCE:
        raise ValueError("not an X.509 certificate")
    if _element(cert_der, pos)[0] == _VERSION_TAG:
        pos = _element(cert_der, pos)[2]
    for _field in ("serialNumber", "signature", "issuer", "validity", "subject"):
        pos = _element(cert_der, pos)[2]
    spki_tag, _, spki_end = _element(cert_der, pos)
    if spki_tag != _SEQUENCE:
        raise ValueError("no SubjectPublicKeyInfo where expected")
    return cert_der[pos:spki_end]


def discovery_hash(cert_der):
    """kubeadm's --discovery-token-ca-cert-hash for one CA certificate."""
    return "sha256:" + hashlib.sha256(subject_public_key_info(cert_der)).hexdigest()


def discovery_hashes_from_pem(pem_text):
    """One hash per certificate in a PEM bundle (kubeadm accepts several, one per CA)."""
    blocks = _PEM_CERT_RE.findall(pem_text)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [discovery_hash(ssl.PEM_cert_to_DER_cert(block)) for block in blocks]
