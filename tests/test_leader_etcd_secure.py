"""The etcd engine against a REAL etcd serving TLS with client certificates, then with
etcd's own authentication on: `leader.etcd.ca_file`, `cert_file`, `key_file`,
`username`, `password_file`."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sweeper.leader import EngineError
from sweeper.leader_etcd import EtcdEngine
from sweeper.leader_settings import EtcdSettings
from tests.etcd import Etcd

PASSWORD = "root-pass-0123"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        ext = folder / f"{name}.ext"
        ext.write_text(
            (extra + "\n" if extra else "")
            # etcd's JSON gateway dials its own gRPC side with the server certificate.
            + f"extendedKeyUsage={'serverAuth,clientAuth' if name == 'server' else 'clientAuth'}\n"
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", ext.name,
                "-out", f"{name}.pem", cwd=folder)  # fmt: skip


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_pki(folder)
    return folder


@pytest.fixture(name="secure_etcd", scope="module")
def _secure_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[Etcd]:
    verify = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    verify.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    server = Etcd(
        tmp_path_factory.mktemp("etcd-tls") / "data",
        scheme="https",
        extra_args=(
            f"--cert-file={pki / 'server.pem'}",
            f"--key-file={pki / 'server.key'}",
            "--client-cert-auth",
            f"--trusted-ca-file={pki / 'ca.pem'}",
        ),
        verify=verify,
    ).start()
    yield server
    server.stop()


@pytest.fixture(name="auth_etcd", scope="module")
def _auth_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[Etcd]:
    """TLS for the server only: with client certificates required, etcd takes the user
    from the certificate and its JSON gateway refuses password authentication."""
    server = Etcd(
        tmp_path_factory.mktemp("etcd-auth") / "data",
        scheme="https",
        extra_args=(f"--cert-file={pki / 'server.pem'}", f"--key-file={pki / 'server.key'}"),
        verify=ssl.create_default_context(cafile=str(pki / "ca.pem")),
    ).start()
    yield server
    server.stop()


def tls_settings(etcd: Etcd, pki: Path, **auth: object) -> EtcdSettings:
    return EtcdSettings(
        endpoints=[etcd.url],
        ca_file=pki / "ca.pem",
        cert_file=pki / "client.pem",
        key_file=pki / "client.key",
        **auth,  # type: ignore[arg-type]
    )


def elect_once(settings: EtcdSettings, name: str) -> str | None:
    async def scenario() -> str | None:
        engine = EtcdEngine(
            settings, name=name, identity="tls-copy", lease_seconds=4, renew_every=1
        )
        try:
            await engine.campaign(lambda holder: None)
            await engine.renew()
            holder = await engine.holder()
            await engine.release()
            return holder
        finally:
            await engine.close()

    return asyncio.run(scenario())


def test_tls_with_a_client_certificate(secure_etcd: Etcd, pki: Path) -> None:
    """ca_file + cert_file + key_file: elected over TLS; without the client certificate
    etcd refuses the connection (an EngineError, nothing leaks)."""
    assert elect_once(tls_settings(secure_etcd, pki), "tls") == "tls-copy"
    bare = EtcdSettings(endpoints=[secure_etcd.url], ca_file=pki / "ca.pem")

    async def without_cert() -> None:
        engine = EtcdEngine(bare, name="tls", identity="x", lease_seconds=4, renew_every=1)
        try:
            with pytest.raises(EngineError):
                await engine.holder()
        finally:
            await engine.close()

    asyncio.run(without_cert())


def test_etcd_authentication(auth_etcd: Etcd, pki: Path, tmp_path: Path) -> None:
    """With etcd's auth on, username + password_file get a token and the election works;
    a wrong password is an EngineError that does not show it."""
    client = httpx.Client(
        base_url=auth_etcd.url,
        verify=auth_etcd.verify,  # type: ignore[arg-type]
    )
    with client:
        client.post("/v3/auth/user/add", json={"name": "root", "password": PASSWORD})
        client.post("/v3/auth/user/grant", json={"user": "root", "role": "root"})
        enabled = client.post("/v3/auth/enable", json={})
        assert enabled.status_code == 200, enabled.text
        try:
            password = tmp_path / "password"
            password.write_text(PASSWORD + "\n")
            settings = EtcdSettings(
                endpoints=[auth_etcd.url],
                ca_file=pki / "ca.pem",
                username="root",
                password_file=password,
            )
            assert elect_once(settings, "auth") == "tls-copy"
            password.write_text("wrong-password-xyz")
            with pytest.raises(EngineError) as refused:
                elect_once(settings, "auth")
            assert "wrong-password" not in str(refused.value)
        finally:
            token = client.post(
                "/v3/auth/authenticate", json={"name": "root", "password": PASSWORD}
            ).json()["token"]
            client.post("/v3/auth/disable", json={}, headers={"Authorization": token})
