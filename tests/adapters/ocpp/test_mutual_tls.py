"""Security profile 3 (mutual TLS) at the transport: the charge point proves itself with its
certificate, sends no Basic auth, and verifies the server as in profile 2.

The test central system (csms.py) serves TLS without asking for client certificates, so this
test uses a bare websockets server that demands one (signed by the test CA) and records what
the charge point presented. The OCPP exchange itself is the same as over profile 2 (tested
against the strict CSMS in test_ocpp_e2e.py).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from controller.adapters.ocpp.settings import OcppTls
from tests.adapters.ocpp.csms import TlsFiles
from tests.adapters.ocpp.rig import Site, settings, until


def client_certificate(tls: TlsFiles, directory: Path, cn: str) -> tuple[Path, Path]:
    """A client certificate for ``cn`` (O = the operator), signed by the test CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ca_key = tls.ca_file.with_name("ca.key")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        f"/CN={cn}/O=Test CPO",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        str(tls.ca_file),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "client.pem",
        "-extfile",
        "client.ext",
    )
    return directory / "client.pem", directory / "client.key"  # fmt: skip


def test_profile_3_presents_the_client_certificate_and_no_password(
    tmp_path: Path, csms_tls_files: TlsFiles
) -> None:
    cert, key = client_certificate(csms_tls_files, tmp_path, "SERIAL-42")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(csms_tls_files.server_cert), str(csms_tls_files.server_key))
    server_ctx.load_verify_locations(str(csms_tls_files.ca_file))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    seen: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        peer = ws.transport.get_extra_info("peercert")
        subject = {k: v for part in peer["subject"] for k, v in part}
        assert ws.request is not None
        seen.append({"subject": subject, "auth": ws.request.headers.get("Authorization"),
                     "path": ws.request.path, "protocol": ws.subprotocol})  # fmt: skip
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            0,
            ssl=server_ctx,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        ) as server:
            port = server.sockets[0].getsockname()[1]
            ocpp = replace(
                settings(f"wss://localhost:{port}/ocpp"),
                security_profile=3,
                tls=OcppTls(ca_file=csms_tls_files.ca_file, cert_file=cert, key_file=key),
            )
            async with Site(tmp_path / "state", ocpp):
                await until(lambda: bool(seen), 5, what="the TLS connection")
        assert seen[0]["subject"]["commonName"] == "SERIAL-42"
        assert seen[0]["auth"] is None  # profile 3: the certificate, no password
        assert seen[0]["path"] == "/ocpp/CP_1" and seen[0]["protocol"] == "ocpp1.6"

    asyncio.run(scenario())
