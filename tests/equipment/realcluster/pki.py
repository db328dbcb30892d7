"""The real cluster's PKI, made fresh at every start: one CA, a serving certificate for each
server (etcd, API server, kubelet), client certificates for each component and for the admin,
and the ServiceAccount token signing key pair. PEM files in the state directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import CLUSTER_DOMAIN, NODE_NAME, Config

VALIDITY = datetime.timedelta(days=2)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    return x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name("bridge-real-cluster-ca")
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256()))
        self.cert_path = self.dir / "ca.crt"
        self.cert_path.write_bytes(self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, stem: str, cn: str, orgs: tuple[str, ...] = (), *, server: bool = False,
              client: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()
              ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn, orgs)).issuer_name(self._name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if dns or ips:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [*(x509.DNSName(d) for d in dns),
                 *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.touch(mode=0o600)
        issued.key.write_bytes(_key_pem(key))
        return issued


@dataclass(frozen=True)
class ClusterPki:
    ca: Path
    etcd: Issued
    apiserver: Issued
    apiserver_etcd_client: Issued
    apiserver_kubelet_client: Issued
    kubelet: Issued
    kubelet_client: Issued
    controller_manager: Issued
    scheduler: Issued
    proxy: Issued
    admin: Issued
    token_minter: Issued
    sa_key: Path
    sa_pub: Path


def make(config: Config) -> ClusterPki:
    ca = Authority(config.path("pki"))
    local = ("127.0.0.1",)
    svc = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost")
    sa = ec.generate_private_key(ec.SECP256R1())
    sa_key, sa_pub = ca.dir / "sa.key", ca.dir / "sa.pub"
    sa_key.touch(mode=0o600)
    sa_key.write_bytes(_key_pem(sa))
    sa_pub.write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return ClusterPki(
        ca=ca.cert_path,
        etcd=ca.issue("etcd", "etcd", server=True, client=True, dns=("localhost",), ips=local),
        apiserver=ca.issue("apiserver", "kube-apiserver", server=True, dns=svc,
                           ips=(*local, config.node_ip, config.api_service_ip)),
        apiserver_etcd_client=ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client",
                                       client=True),
        apiserver_kubelet_client=ca.issue("apiserver-kubelet-client",
                                          "kube-apiserver-kubelet-client", client=True),
        kubelet=ca.issue("kubelet", NODE_NAME, server=True, dns=(NODE_NAME, "localhost"),
                         ips=(*local, config.node_ip)),
        kubelet_client=ca.issue("kubelet-client", f"system:node:{NODE_NAME}",
                                ("system:nodes",), client=True),
        controller_manager=ca.issue("controller-manager", "system:kube-controller-manager",
                                    client=True),
        scheduler=ca.issue("scheduler", "system:kube-scheduler", client=True),
        proxy=ca.issue("kube-proxy", "system:kube-proxy", client=True),
        admin=ca.issue("admin", "bridge-admin", ("system:masters",), client=True),
        token_minter=ca.issue("token-minter", "bridge-token-minter", client=True),
        sa_key=sa_key, sa_pub=sa_pub)
