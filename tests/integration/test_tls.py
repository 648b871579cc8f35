"""Peers over mutual TLS: certificates from a throwaway CA (openssl), a group of three agrees
and moves a snapshot; plain HTTP and certificate-less TLS clients are refused at the door."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.peer_stream import STREAM_PATH

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
    pytest.mark.timeout(120),
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA and one certificate for 127.0.0.1 (all members share it here; each pod has its own)."""
    directory.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=chaos-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=member", "-keyout", "member.key",
             "-out", "member.csr", cwd=directory)  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "member.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "ext.cnf", "-out", "member.pem", cwd=directory)  # fmt: skip
    return {"cert": directory / "member.pem", "key": directory / "member.key", "ca": directory / "ca.pem"}


async def test_group_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--tls-ca", str(pki["ca"])]
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await cluster.start("n0", seed=True, extra=tls)
        await cluster.start("n1", extra=tls)
        await cluster.start("n2", extra=tls)
        await cluster.wait_agreed({"n0", "n1", "n2"}, 30)
        url = cluster.nodes["n0"].url
        assert url.startswith("https://")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
                async with session.get(url.replace("https://", "http://") + STREAM_PATH) as response:
                    await response.read()
            no_cert = ssl.create_default_context(cafile=str(pki["ca"]))
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):  # TLS without a client certificate
                async with session.get(url + STREAM_PATH, ssl=no_cert) as response:
                    await response.read()
            with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
            with_cert.load_cert_chain(str(pki["cert"]), str(pki["key"]))
            async with session.get(url + STREAM_PATH, ssl=with_cert) as response:
                assert response.status == 401  # through TLS, the join secret is still required
