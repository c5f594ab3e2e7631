"""A throw-away PKI and the shipped broker configuration, for the security tests.

Imported as `tlskit` (pytest puts this folder on sys.path; this module puts the MQTT and integration kits there too,
for `brokerkit` and `sitekit`).

The CA, the broker's certificate and the clients' certificates are made with `cryptography`'s x509 builder (P-256
keys: fast to make, and what a small gateway would use). The broker runs with the files a deployment installs:
deploy/mosquitto.conf and deploy/mosquitto.acl, read from the repository with only paths and ports substituted, so a
change to either file is what the tests check. A substitution that no longer finds its line fails loudly instead of
testing a configuration nobody ships. For more sites than the shipped site1, the ACL is what deploy/acl-for-sites.sh
writes from deploy/mosquitto.acl for the site list, as a deployment does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).parents[1] / "mqtt"))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from brokerkit import HOST, Broker, free_port
from sitekit import ROOT, eventually, shipped_config_on_free_ports, shipped_sim

# re-exported: test modules import the kits through this one (ruff sorts `sitekit` before `tlskit`, which puts the
# integration folder on sys.path); a tests/security/conftest.py doing the sys.path set-up would make this unneeded
__all__ = [
    "DEPLOY",
    "HOST",
    "ROOT",
    "Issued",
    "Pki",
    "ShippedBroker",
    "acl_for_sites",
    "eventually",
    "password_file",
    "shipped_config_on_free_ports",
    "shipped_sim",
]

DEPLOY = Path(__file__).parents[2] / "deploy"


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass
class Pki:
    """One CA that signs the broker's certificate and the clients' certificates (a site's private PKI)."""

    directory: Path
    name: str = "vpp-test-ca"
    _key: ec.EllipticCurvePrivateKey = field(init=False)
    _cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.directory / f"{self.name}.crt"

    def server(self) -> Issued:
        """The broker's certificate, valid for 127.0.0.1 and localhost."""
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")])
        return self._issue("broker", san, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, common_name: str) -> Issued:
        """A client certificate whose CN is `common_name` (by convention the MQTT user name it goes with)."""
        return self._issue(common_name, None, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(self, common_name: str, san: x509.SubjectAlternativeName | None, usage: x509.ObjectIdentifier) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.directory / f"{common_name}.crt", self.directory / f"{common_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        issued.key.chmod(0o600)
        return issued


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file made the way docs/security.md tells a deployment to (`mosquitto_passwd -b`)."""
    path.write_text("")
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
    return path


def acl_for_sites(sites: tuple[str, ...]) -> str:
    """The ACL deploy/acl-for-sites.sh writes from deploy/mosquitto.acl for `sites`."""
    done = subprocess.run(["sh", str(DEPLOY / "acl-for-sites.sh"), *sites], check=True, capture_output=True, text=True)
    return done.stdout


def _substitute(text: str, pattern: str, replacement: str) -> str:
    """Replace the one line matching `pattern`; fail if the shipped file no longer has exactly one."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"deploy/mosquitto.conf: expected one line matching {pattern!r}, found {count}")
    return new


@dataclass
class ShippedBroker(Broker):
    """Mosquitto with deploy/mosquitto.conf and deploy/mosquitto.acl: only paths and ports differ from a deployment.

    `port` is the loopback listener (1883 in the file), `tls_port` the TLS listener (8883 in the file, bound to
    127.0.0.1 here as every test server is). `sites`: None serves the shipped mosquitto.acl as it stands (the block
    for site1); a list of site ids serves what deploy/acl-for-sites.sh writes for them.
    """

    tls_port: int = field(default_factory=free_port)
    pki: Pki | None = None
    sites: tuple[str, ...] | None = None

    def config_text(self) -> str:
        if self.pki is None or self.users is None:
            raise ValueError("ShippedBroker needs users and a pki")
        server = self.pki.server()
        passwd = password_file(self.directory / "vpp.passwd", self.users)
        acl = self.directory / "vpp.acl"
        acl.write_text((DEPLOY / "mosquitto.acl").read_text() if self.sites is None else acl_for_sites(self.sites))
        text = (DEPLOY / "mosquitto.conf").read_text()
        # values only: the rest of each line stays as shipped, so a stray word after a path would fail here too
        swaps = [
            # commented in the file (Debian's own mosquitto.conf sets it; a second one is a start-up error there)
            (r"^#persistence_location /var/lib/mosquitto/$", f"persistence_location {self.directory}/"),
            (r"^(password_file) /etc/mosquitto/vpp\.passwd", rf"\1 {passwd}"),
            (r"^(acl_file) /etc/mosquitto/vpp\.acl", rf"\1 {acl}"),
            (r"^listener 1883 127\.0\.0\.1", f"listener {self.port} {HOST}"),
            (r"^listener 8883", f"listener {self.tls_port} {HOST}"),
            (r"^(cafile) /etc/mosquitto/certs/ca\.crt", rf"\1 {self.pki.ca_file}"),
            (r"^(certfile) /etc/mosquitto/certs/broker\.crt", rf"\1 {server.cert}"),
            (r"^(keyfile) /etc/mosquitto/certs/broker\.key", rf"\1 {server.key}"),
        ]
        for pattern, replacement in swaps:
            text = _substitute(text, pattern, replacement)
        self.ca_file = self.pki.ca_file
        extra = [f"log_dest file {self.directory / 'mosquitto.log'}", "log_type all"]
        if os.geteuid() == 0:  # as root mosquitto drops to user 'mosquitto', who cannot write our temp dir
            extra.append("user root")
        # global options go before the first listener (after it they would still be global, but keep it plain)
        return "\n".join(extra) + "\n" + text

    def log_text(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
