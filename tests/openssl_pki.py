"""A test PKI made by the OpenSSL command-line tools: keys, certificate chains, CRLs and
signatures from a real signer that PluginGuard's own code did not write."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ALGORITHM_OPTIONS = {
    "RSA-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "RSA-3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    "RSA-4096": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
    "Ed25519": ["-algorithm", "ED25519"],
    "ECDSA-P256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ECDSA-P384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
}
_DIGEST = {"ECDSA-P384": "-sha384"}

_CA_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
default_ca = this
[this]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
crlnumber = {dir}/crlnumber
default_md = sha256
default_crl_days = 30
policy = anything
[anything]
commonName = supplied
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[code_signing]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server_auth]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout


def generate_key(path: Path, algorithm: str) -> Path:
    openssl("genpkey", *ALGORITHM_OPTIONS[algorithm], "-out", str(path))
    openssl("pkey", "-in", str(path), "-pubout", "-out", str(path.with_suffix(".pub")))
    return path


def sign_bytes(key: Path, algorithm: str, message: bytes, *, prehashed: bool = False) -> bytes:
    """OpenSSL's signature over ``message`` (or over a SHA-256 digest, when prehashed)."""
    if algorithm == "Ed25519":
        # OpenSSL 3.0 signs Ed25519 only in one shot, which needs the input as a file.
        with tempfile.NamedTemporaryFile() as data:
            data.write(message)
            data.flush()
            return openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(key), "-in", data.name)
    if prehashed:
        options = ["-pkeyopt", "digest:sha256"] if algorithm.startswith("RSA") else []
        return openssl("pkeyutl", "-sign", "-inkey", str(key), *options, input=message)
    return openssl("dgst", _DIGEST.get(algorithm, "-sha256"), "-sign", str(key), input=message)


@dataclass
class Authority:
    """A CA made with ``openssl ca``, able to issue certificates and CRLs."""

    dir: Path
    key: Path
    cert: Path
    config: Path

    def issue(self, name: str, algorithm: str, *, profile: str = "code_signing",
              days: int = 30, window: tuple[str, str] | None = None) -> tuple[Path, Path]:
        """A key and certificate for ``name``; ``window`` is an explicit validity period
        as OpenSSL's (startdate, enddate), e.g. ("20200101000000Z", "20210101000000Z")."""
        key = generate_key(self.dir / f"{name}.key", algorithm)
        csr = self.dir / f"{name}.csr"
        openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
        cert = self.dir / f"{name}.pem"
        openssl("ca", "-batch", "-config", str(self.config), "-cert", str(self.cert), "-keyfile",
                str(self.key), "-extensions", profile, "-notext",
                *(["-startdate", window[0], "-enddate", window[1]] if window
                  else ["-days", str(days)]),
                "-in", str(csr), "-out", str(cert))
        return key, cert

    def subordinate(self, name: str, algorithm: str) -> Authority:
        _, cert = self.issue(name, algorithm, profile="ca_ext", days=365)
        return _authority(self.dir / f"ca-{name}", self.dir / f"{name}.key", cert)

    def revoke(self, cert: Path) -> None:
        openssl("ca", "-config", str(self.config), "-cert", str(self.cert), "-keyfile",
                str(self.key), "-revoke", str(cert))

    def crl(self, *, days: int = 30) -> bytes:
        out = self.dir / "crl.pem"
        openssl("ca", "-gencrl", "-config", str(self.config), "-cert", str(self.cert), "-keyfile",
                str(self.key), "-crldays", str(days), "-out", str(out))
        return out.read_bytes()


def root_authority(dir: Path, name: str, algorithm: str) -> Authority:
    key = generate_key(dir / f"{name}.key", algorithm)
    cert = dir / f"{name}.pem"
    ca_dir = dir / f"ca-{name}"
    ca_dir.mkdir(parents=True, exist_ok=True)
    config = ca_dir / "openssl.cnf"
    config.write_text(_CA_CONFIG.format(dir=ca_dir))
    openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "365",
            "-config", str(config), "-extensions", "ca_ext", "-out", str(cert))
    return _authority(ca_dir, key, cert)


def _authority(ca_dir: Path, key: Path, cert: Path) -> Authority:
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "index.txt").write_text("")
    (ca_dir / "serial").write_text("1000\n")
    (ca_dir / "crlnumber").write_text("1000\n")
    config = ca_dir / "openssl.cnf"
    config.write_text(_CA_CONFIG.format(dir=ca_dir))
    return Authority(ca_dir, key, cert, config)
