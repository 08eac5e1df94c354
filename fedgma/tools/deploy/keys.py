"""TLS certificates and SuperNode keys for a Flower deployment, with ``cryptography``.

``cryptography`` comes with Flower, so no ``openssl`` or ``ssh-keygen`` is needed:

* :func:`make_certificates`: a private CA and a SuperLink server certificate
  signed by it, valid for 127.0.0.1, localhost and any host names or IP
  addresses given (the subject alternative names the SuperNodes and the CLI
  check). The SuperLink gets ``ca.crt``, ``server.pem`` and ``server.key``;
  SuperNodes and the CLI only ``ca.crt``; the CA's key is written to a folder of
  its own, to be kept off the SuperLink's host.
* :func:`make_node_key`: an EC P-384 key pair in OpenSSH format, the form that
  ``flwr supernode register`` (public key) and ``flower-supernode
  --auth-supernode-private-key`` (private key) read.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, encoding_format) -> None:
    """A private key file readable by its owner only from the moment it exists: created with mode 0600 and
    O_EXCL (a file or symlink already at ``path`` is an error, never followed or overwritten)."""
    data = key.private_bytes(serialization.Encoding.PEM, encoding_format, serialization.NoEncryption())
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists already; a new key never replaces one (delete it to make a new "
                              "one)") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["127.0.0.1", "localhost", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_certificates(folder: Path, ca_folder: Path, hosts: list[str] | None = None) -> dict[str, Path]:
    """Write ca.crt, server.pem and server.key (what a SuperLink host needs) into ``folder`` and the CA's
    private key ca.key into ``ca_folder``, apart: whoever holds ca.key can sign a certificate for any host
    and impersonate the SuperLink, so it stays where certificates are issued, not on the SuperLink's host."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedGMA deployment CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flower-superlink")]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts or [])),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA384()))
    paths = {"ca_cert": folder / "ca.crt", "ca_key": ca_folder / "ca.key",
             "server_cert": folder / "server.pem", "server_key": folder / "server.key"}
    paths["ca_cert"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["server_cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, paths["ca_key"], serialization.PrivateFormat.PKCS8)
    _write_key(server_key, paths["server_key"], serialization.PrivateFormat.PKCS8)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``name`` (private) and ``name.pub`` (public), OpenSSH EC P-384; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    _write_key(key, private, serialization.PrivateFormat.OpenSSH)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public
