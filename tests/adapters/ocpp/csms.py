"""Test support: an OCPP 1.6J central system on 127.0.0.1 that validates every message both ways.

`CentralSystem` runs tests/adapters/ocpp/csms/server.js (Node.js, ocpp-rpc in strictMode), which
checks every CALL and CALLRESULT in either direction against the official OCPP 1.6 JSON schemas
bundled in ocpp-rpc. It is not built on the Python `ocpp` library the product uses, so a shared
misreading of the schemas cannot pass on both sides. Every frame both ways is logged to
``<directory>/messages.jsonl`` and every violation to ``<directory>/violations.jsonl``; this class
reads those files, so the log and the violations survive a restart and can be read after stop().

Typical use (the ``csms`` fixture in conftest.py starts one per test and, at teardown, fails the
test if a violation was recorded that the test did not take with `take_violations`)::

    def test_boot(csms: CentralSystem) -> None:
        csms.configure(id_tags={"TAG1": "Accepted"})
        ... connect the charge point under test to csms.url("CP_1") ...
        boot = csms.wait_for("BootNotification", identity="CP_1")
        result = csms.call("CP_1", "RemoteStartTransaction", {"idTag": "TAG1"})

Inside a coroutine whose event loop also runs the charge point, use the ``*_async`` methods:
the plain ones block the calling thread while the charge point must answer.

The control API of the server is plain HTTP with JSON bodies on another port of 127.0.0.1
(csms/README.md). Without node or csms/node_modules the fixtures skip with the reason;
`make test` installs both (tests/outside-deps.sh).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

CSMS_DIR = Path(__file__).resolve().parent / "csms"
SERVER_JS = CSMS_DIR / "server.js"
NODE_MIN_MAJOR = 18

Direction = Literal["from_cp", "to_cp"]
BootStatus = Literal["Accepted", "Pending", "Rejected"]
CALL, CALLRESULT, CALLERROR = 2, 3, 4
IdTagStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_problem() -> str | None:
    """Why the central system cannot run here (node missing or too old, npm ci not run), or None."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed (make test installs it: tests/outside-deps.sh)"
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    m = re.match(r"v(\d+)\.", out.stdout.strip())
    if not m or int(m.group(1)) < NODE_MIN_MAJOR:
        return f"node {out.stdout.strip()} is older than {NODE_MIN_MAJOR} (tests/outside-deps.sh)"
    if not (CSMS_DIR / "node_modules" / "ocpp-rpc").is_dir():
        return f"ocpp-rpc is not installed: run `npm ci` in {CSMS_DIR} (tests/outside-deps.sh)"
    return None


# ---------------------------------------------------------------------------------------------
# what the central system recorded


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One websocket frame, either way, as the central system sent or received it."""

    index: int  # position in the log, counted over restarts; pass to `since=`
    ts: str  # ISO 8601 UTC, when the central system sent or received it
    identity: str
    direction: Direction  # from_cp: charge point -> central system; to_cp: the other way
    frame: str  # the exact text of the frame
    message_type: int | None  # 2 CALL, 3 CALLRESULT, 4 CALLERROR; None when not an OCPP-J array
    message_id: str | None
    action: str | None  # a CALL's action; for an answer, the action of the CALL it answers
    payload: Any  # a CALL's or CALLRESULT's payload; None for a CALLERROR
    error_code: str | None = None  # CALLERROR only
    error_description: str | None = None
    error_details: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionEvent:
    """A charge point connected, disconnected, was refused or replaced by a newer connection."""

    index: int  # shares the numbering of `Message.index`
    ts: str
    identity: str
    event: Literal["connected", "disconnected", "rejected", "replaced"]
    detail: Any  # disconnected: {"code", "reason"}; rejected: why


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """A message (or handshake) that broke the OCPP 1.6 schemas or OCPP-J framing.

    kind: ``call`` / ``result`` (a CALL or CALLRESULT payload failed its JSON schema; with
    direction to_cp it is the central system's own, e.g. a bad id-tag table), ``frame`` (not an
    OCPP-J RPC frame, or an answer to an unknown message id), ``action`` (a CALL of an action
    charge points do not initiate), ``callerror`` (an errorCode outside OCPP-J 1.6),
    ``handshake`` (no ocpp1.6 subprotocol offered).
    """

    index: int
    ts: str
    identity: str
    direction: Direction
    kind: str
    action: str | None
    message_id: str | None
    error_code: str | None
    error: str
    details: Any  # ajv's error objects for schema failures
    payload: Any

    def __str__(self) -> str:
        return (
            f"#{self.index} {self.identity} {self.direction} {self.kind} {self.action}: "
            f"{self.error} (payload {json.dumps(self.payload)})"
        )


class CsmsError(Exception):
    """The root of what the central system's API raises."""


class NotConnected(CsmsError):
    """No charge point of that identity is connected."""


class CallTimeout(CsmsError):
    """The charge point did not answer the call in time."""


class CallError(CsmsError):
    """The charge point answered the call with a CALLERROR."""

    def __init__(self, code: str | None, description: str | None, details: Any) -> None:
        super().__init__(f"CALLERROR {code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class InvalidPayload(CsmsError):
    """Strict mode refused the call's payload (direction to_cp: never sent) or the charge point's
    response (from_cp). The violation is recorded; `take_violations` if it was the test's intent.
    """

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


@dataclass(frozen=True, slots=True, kw_only=True)
class IdTag:
    """An entry of the central system's id-tag table (an OCPP 1.6 IdTagInfo)."""

    status: IdTagStatus = "Accepted"
    parent_id_tag: str | None = None
    expiry_date: datetime | str | None = None  # an aware datetime or an RFC 3339 string

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        if isinstance(self.expiry_date, datetime):
            out["expiryDate"] = self.expiry_date.isoformat()
        elif self.expiry_date is not None:
            out["expiryDate"] = self.expiry_date
        return out


# ---------------------------------------------------------------------------------------------
# TLS material


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    ca_file: Path  # the test CA: what a charge point trusts
    server_cert: Path  # for 127.0.0.1 and localhost, signed by the test CA
    server_key: Path
    other_ca_file: Path  # a CA that signed nothing here: verification must fail with it


def make_tls_files(directory: Path) -> TlsFiles:
    """A test CA and a server certificate for 127.0.0.1/localhost (2 days), plus an unrelated CA.

    Made with the openssl CLI (tests/outside-deps.sh installs it; `cryptography` is not a
    dependency of this project).
    """
    directory.mkdir(parents=True, exist_ok=True)
    _make_tls_files_openssl(directory)
    return TlsFiles(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        other_ca_file=directory / "other-ca.pem",
    )


def _make_tls_files_openssl(d: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-days", "2", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-subj", f"/CN=evsite test {ca}")  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "server.pem",
            "-extfile", "server.ext")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the central system


class _JsonLines:
    """Reads a JSON-lines file the server appends to, incrementally and whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                end = data.rfind(b"\n") + 1  # a line still being written waits for next time
                for line in data[:end].splitlines():
                    with contextlib.suppress(ValueError):  # a line cut short by a kill
                        self.entries.append(json.loads(line))
                self._offset += end
            return list(self.entries)


class CentralSystem:
    """One test central system (a node process) on 127.0.0.1; `restart` keeps its port and log.

    The configuration given here is the initial one; `configure` and `configure_action` change
    it at runtime (or, while stopped, for the next start). A restart keeps the configuration,
    including the next transaction id, as a real backend would.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        tls: TlsFiles | None = None,
        password: str | None = None,
        passwords: Mapping[str, str] | None = None,
        boot_status: BootStatus = "Accepted",
        heartbeat_interval_s: int = 300,
        id_tags: Mapping[str, IdTag | IdTagStatus] | None = None,
        next_transaction_id: int = 1,
        data_transfer: Mapping[str, str] | None = None,
        ping_interval_s: int = 30,
    ) -> None:
        """
        directory: its own; holds config.json, messages.jsonl, violations.jsonl, server.log
          (a new CentralSystem there starts a new log; a restart continues it).
        port: 0 picks a free one now (kept by restarts), so `url()` works before `start()`.
        tls: serve wss:// with this server certificate (TLS >= 1.2; security profile 2).
        password / passwords: HTTP Basic auth (security profiles 1 and 2): the user must be the
          charge point's identity; the password is `passwords[identity]` if present, else
          `password`. With neither, no authentication. A wrong password gets 401.
        id_tags: idTag -> IdTag (or just its status); any other idTag is Invalid.
        data_transfer: vendorId -> status for DataTransfer; any other vendor is UnknownVendorId.
        ping_interval_s: websocket pings to each charge point (0: none).
        """
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for stale in ("messages.jsonl", "violations.jsonl", "server.log"):
            (directory / stale).unlink(missing_ok=True)  # a new central system, a new log
        # known before the first start, so a charge point can be configured (or started while
        # the backend is still down); free_port's race is the one the mosquitto fixture takes
        self.port = port or free_port()
        self.http_port = 0
        self.tls = tls
        self.ping_interval_s = ping_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._config_file = directory / "config.json"
        self._messages = _JsonLines(directory / "messages.jsonl")
        self._violations = _JsonLines(directory / "violations.jsonl")
        self._taken = 0  # violations a test took on purpose (take_violations)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._write_config(
            _config_json(
                boot_status=boot_status,
                heartbeat_interval_s=heartbeat_interval_s,
                id_tags=id_tags or {},
                next_transaction_id=next_transaction_id,
                data_transfer=data_transfer or {},
                password=password,
                passwords=passwords or {},
            )
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server on `port` and wait for its READY line."""
        if self.running:
            return
        node = shutil.which("node")
        if node is None:
            raise CsmsError("node is not installed (tests/outside-deps.sh)")
        cmd = [node, str(SERVER_JS), "--dir", str(self.directory), "--port", str(self.port),
               "--ping-interval-s", str(self.ping_interval_s)]  # fmt: skip
        if self.tls is not None:
            cmd += ["--cert", str(self.tls.server_cert), "--key", str(self.tls.server_key)]
        with (self.directory / "server.log").open("ab") as log:
            # stdin stays a pipe we never write: the server exits when it closes (we died)
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=CSMS_DIR
            )
        line = self._read_ready_line(timeout_s)
        m = re.fullmatch(r"READY ws=(\d+) http=(\d+)", line)
        if m is None:
            self.kill()
            raise CsmsError(f"central system did not start: {line!r}\n{self.server_log()}")
        self.port, self.http_port = int(m.group(1)), int(m.group(2))

    def _read_ready_line(self, timeout_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:  # exited
                    break
                buf += chunk
        return buf.decode(errors="replace").strip()

    def stop(self) -> None:
        """SIGTERM: the server closes every charge point's websocket (1001 Going Away) and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL: the backend dies; the sockets close without a websocket close frame."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds (an outage), start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> CentralSystem:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def server_log(self) -> str:
        """The server's stderr over all its runs (violations are echoed there too)."""
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- where charge points connect --------------------------------------------------------------

    def url(self, identity: str, *, password: str | None = None) -> str:
        """The charge point's endpoint, ws:// or wss:// (with Basic credentials if given)."""
        scheme = "wss" if self.tls is not None else "ws"
        quoted = urllib.parse.quote(identity, safe="")
        auth = ""
        if password is not None:
            auth = f"{quoted}:{urllib.parse.quote(password, safe='')}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{quoted}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """What a charge point uses to verify this server: the test CA, TLS >= 1.2."""
        if self.tls is None:
            raise CsmsError("this central system was made without TLS")
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    @staticmethod
    def basic_auth_header(identity: str, password: str) -> str:
        """The Authorization header value of OCPP security profiles 1 and 2."""
        return "Basic " + base64.b64encode(f"{identity}:{password}".encode()).decode()

    def connected(self) -> list[str]:
        """Identities with an open websocket now."""
        identities: list[str] = self._request("GET", "/clients")["identities"]
        return identities

    def wait_connected(self, identity: str, timeout_s: float = 5.0) -> None:
        _poll(lambda: identity in self.connected(), timeout_s, f"{identity} to connect")

    async def wait_connected_async(self, identity: str, timeout_s: float = 5.0) -> None:
        await _poll_async(lambda: identity in self.connected(), timeout_s, f"{identity} to connect")

    def disconnect(self, identity: str, *, force: bool = False, code: int = 1000) -> None:
        """Close a charge point's websocket: with a close frame (`code`), or `force`: at once,
        without one (like a dropped network). Returns without waiting for the close to finish.
        """
        self._request("POST", "/disconnect", {"identity": identity, "force": force, "code": code})

    # -- talking to charge points -----------------------------------------------------------------

    def call(
        self,
        identity: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """Send a CALL, validated by strict mode, and return the validated CALLRESULT payload.

        Raises CallError (CALLERROR), CallTimeout, InvalidPayload (strict mode refused our
        payload or the charge point's answer), NotConnected. Blocks: use `call_async` from a
        coroutine on the charge point's event loop.
        """
        body = {"identity": identity, "action": action, "payload": dict(payload or {}),
                "timeoutMs": timeout_s * 1000}  # fmt: skip
        out = self._request("POST", "/call", body, timeout_s=timeout_s + 10)
        if out["ok"]:
            result: dict[str, Any] = out["result"]
            return result
        stage = out["stage"]
        if stage == "callerror":
            err = out["error"]
            raise CallError(err.get("code"), err.get("description"), err.get("details"))
        if stage == "timeout":
            raise CallTimeout(f"{identity} did not answer {action} within {timeout_s} s")
        if stage in ("request_invalid", "response_invalid"):
            raise InvalidPayload(_violation(out["violation"]))
        raise NotConnected(f"{identity}: {out.get('message', stage)}")

    async def call_async(
        self,
        identity: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """`call` in a worker thread, so the event loop goes on running the charge point."""
        return await asyncio.to_thread(self.call, identity, action, payload, timeout_s)

    def send_raw(
        self,
        identity: str,
        text: str,
        timeout_s: float = 5.0,
        *,
        message_id: str | None = None,
    ) -> str | None:
        """Send `text` as one websocket frame, unvalidated (malformed calls, bad JSON, ...), and
        return the raw frame the charge point answered with, or None if none came in time.

        The answer is matched by message id: `message_id` if given, else the one in `text` if it
        parses as an array with a string second element, else the first CALLRESULT/CALLERROR
        that answers no call of the central system's own. Answers to raw frames are neither
        validated nor counted as violations.
        """
        body: dict[str, Any] = {"identity": identity, "text": text, "timeoutMs": timeout_s * 1000}
        if message_id is not None:
            body["messageId"] = message_id
        out = self._request("POST", "/raw", body, timeout_s=timeout_s + 10)
        answer: str | None = out["answer"]
        return answer

    async def send_raw_async(
        self,
        identity: str,
        text: str,
        timeout_s: float = 5.0,
        *,
        message_id: str | None = None,
    ) -> str | None:
        return await asyncio.to_thread(
            lambda: self.send_raw(identity, text, timeout_s, message_id=message_id)
        )

    # -- configuration ----------------------------------------------------------------------------

    def configure(
        self,
        *,
        boot_status: BootStatus | None = None,
        heartbeat_interval_s: int | None = None,
        id_tags: Mapping[str, IdTag | IdTagStatus] | None = None,
        next_transaction_id: int | None = None,
        data_transfer: Mapping[str, str] | None = None,
        password: str | None = None,
        passwords: Mapping[str, str] | None = None,
        no_auth: bool = False,
    ) -> dict[str, Any]:
        """Change what is given (id_tags and data_transfer replace the whole table; password or
        passwords replace the authentication, no_auth removes it); returns the whole config.
        Applies at once while running, else at the next start.
        """
        update = _config_json(
            boot_status=boot_status,
            heartbeat_interval_s=heartbeat_interval_s,
            id_tags=id_tags,
            next_transaction_id=next_transaction_id,
            data_transfer=data_transfer,
            password=password,
            passwords=passwords,
        )
        if no_auth:
            update["auth"] = {"password": None, "passwords": {}}
        return self._update_config(update)

    def configure_action(
        self,
        action: str,
        *,
        delay_s: float = 0.0,
        reject: str | None = None,
        reject_description: str = "",
        times: int | None = None,
        no_reply: bool = False,
    ) -> dict[str, Any]:
        """How the central system answers the charge point's `action` from now on: after
        `delay_s`; with a CALLERROR `reject` (e.g. "InternalError") for the next `times` calls
        (None: every call), then normally; or not at all (`no_reply`, to test timeouts).
        Called with only `action`, it restores the normal answer.
        """
        behaviour: dict[str, Any] = {}
        if delay_s > 0:
            behaviour["delayMs"] = round(delay_s * 1000)
        if reject is not None:
            behaviour["reject"] = {"code": reject, "description": reject_description,
                                   "times": times}  # fmt: skip
        if no_reply:
            behaviour["noReply"] = True
        return self._update_config({"actions": {action: behaviour}})

    def config(self) -> dict[str, Any]:
        """The server's configuration as JSON (its keys: csms/README.md)."""
        if self.running:
            cfg: dict[str, Any] = self._request("GET", "/config")
            return cfg
        return self._read_config()

    def _update_config(self, update: dict[str, Any]) -> dict[str, Any]:
        if self.running:
            cfg: dict[str, Any] = self._request("POST", "/config", update)
            return cfg
        cfg = self._read_config()
        for key, value in update.items():
            if key == "actions":
                actions = {**cfg.get("actions", {}), **value}
                cfg["actions"] = {a: b for a, b in actions.items() if b}
            else:
                cfg[key] = value
        self._write_config(cfg)
        return cfg

    def _read_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(self._config_file.read_text())
        return cfg

    def _write_config(self, cfg: dict[str, Any]) -> None:
        tmp = self._config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        tmp.replace(self._config_file)

    # -- the log ----------------------------------------------------------------------------------

    def messages(
        self,
        identity: str | None = None,
        action: str | None = None,
        direction: Direction | None = None,
        message_type: int | None = None,
        *,
        since: int = 0,
    ) -> list[Message]:
        """Frames both ways, oldest first, filtered by what is given; `since` is an index
        from `mark()`. An answer's action is that of the CALL it answers.
        """
        return [
            m
            for m in self._frames(since)
            if (identity is None or m.identity == identity)
            and (action is None or m.action == action)
            and (direction is None or m.direction == direction)
            and (message_type is None or m.message_type == message_type)
        ]

    def events(self, identity: str | None = None, *, since: int = 0) -> list[ConnectionEvent]:
        """Connections, disconnections and refused upgrades, oldest first."""
        return [
            ConnectionEvent(
                index=e["i"], ts=e["ts"], identity=e["identity"], event=e["event"],
                detail=e.get("detail"),
            )
            for e in self._messages.read()[since:]
            if "event" in e and (identity is None or e["identity"] == identity)
        ]  # fmt: skip

    def wait_event(
        self,
        event: Literal["connected", "disconnected", "rejected", "replaced"],
        identity: str | None = None,
        timeout_s: float = 5.0,
        *,
        since: int = 0,
    ) -> ConnectionEvent:
        """The first such connection event from index `since` on; waits up to `timeout_s`."""
        found: list[ConnectionEvent] = []

        def check() -> bool:
            found[:] = [e for e in self.events(identity, since=since) if e.event == event][:1]
            return bool(found)

        _poll(check, timeout_s, f"{identity or 'a charge point'} {event}")
        return found[0]

    async def wait_event_async(
        self,
        event: Literal["connected", "disconnected", "rejected", "replaced"],
        identity: str | None = None,
        timeout_s: float = 5.0,
        *,
        since: int = 0,
    ) -> ConnectionEvent:
        """`wait_event` polling with asyncio.sleep."""
        found: list[ConnectionEvent] = []

        def check() -> bool:
            found[:] = [e for e in self.events(identity, since=since) if e.event == event][:1]
            return bool(found)

        await _poll_async(check, timeout_s, f"{identity or 'a charge point'} {event}")
        return found[0]

    def mark(self) -> int:
        """The index the next frame or event will get: `since=csms.mark()` means "from now"."""
        return len(self._messages.read())

    def wait_for(
        self,
        action: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout_s: float = 5.0,
        *,
        identity: str | None = None,
        direction: Direction = "from_cp",
        message_type: int = CALL,
        since: int = 0,
    ) -> Message:
        """The first frame (by default a CALL from a charge point) of `action` from index
        `since` on whose payload satisfies `predicate`; waits up to `timeout_s` for it.
        """
        found: list[Message] = []

        def check() -> bool:
            for m in self.messages(identity, action, direction, message_type, since=since):
                if predicate is None or predicate(m.payload):
                    found.append(m)
                    return True
            return False

        _poll(check, timeout_s, f"{action} {direction} ({identity or 'any identity'})")
        return found[0]

    async def wait_for_async(
        self,
        action: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout_s: float = 5.0,
        *,
        identity: str | None = None,
        direction: Direction = "from_cp",
        message_type: int = CALL,
        since: int = 0,
    ) -> Message:
        """`wait_for` polling with asyncio.sleep, for a coroutine on the charge point's loop."""
        found: list[Message] = []

        def check() -> bool:
            for m in self.messages(identity, action, direction, message_type, since=since):
                if predicate is None or predicate(m.payload):
                    found.append(m)
                    return True
            return False

        await _poll_async(check, timeout_s, f"{action} {direction} ({identity or 'any identity'})")
        return found[0]

    def reply_to(self, message: Message) -> Message | None:
        """The CALLRESULT or CALLERROR that answered a CALL, once it was sent or received."""
        if message.message_type != CALL:
            raise ValueError("reply_to takes a CALL")
        for m in self._frames(message.index + 1):
            if (
                m.identity == message.identity
                and m.direction != message.direction
                and m.message_id == message.message_id
                and m.message_type in (CALLRESULT, CALLERROR)
            ):
                return m
        return None

    def _frames(self, since: int) -> list[Message]:
        return [
            Message(
                index=e["i"],
                ts=e["ts"],
                identity=e["identity"],
                direction=e["dir"],
                frame=e["frame"],
                message_type=e["type"],
                message_id=e["id"],
                action=e["action"],
                payload=e["payload"],
                error_code=e["errorCode"],
                error_description=e["errorDescription"],
                error_details=e["errorDetails"],
            )
            for e in self._messages.read()[since:]
            if "frame" in e
        ]

    # -- violations -------------------------------------------------------------------------------

    def violations(self) -> list[Violation]:
        """Every violation this central system recorded, in either direction, over restarts."""
        return [_violation(v) for v in self._violations.read()]

    def take_violations(self) -> list[Violation]:
        """The violations since the last take, marked as expected: a test that provokes them on
        purpose takes them, so the fixture's end-of-test check (`assert_no_violations`) passes.
        """
        found = self.violations()
        taken, self._taken = found[self._taken :], len(found)
        return taken

    def unexpected_violations(self) -> list[Violation]:
        """The violations no `take_violations` took."""
        return self.violations()[self._taken :]

    def assert_no_violations(self) -> None:
        """AssertionError listing every violation no test took; the fixture calls it last."""
        left = self.unexpected_violations()
        if left:
            lines = "\n".join(f"  {v}" for v in left)
            raise AssertionError(f"OCPP 1.6 schema or framing violations:\n{lines}")

    # -- HTTP -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout_s: float = 10.0) -> Any:
        if not self.running:
            raise CsmsError("the central system is not running")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            if e.code == 404 and "not connected" in detail:
                raise NotConnected(detail) from None
            raise CsmsError(f"{method} {path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise CsmsError(f"{method} {path}: {e}\n{self.server_log()[-2000:]}") from None


def _config_json(
    *,
    boot_status: str | None,
    heartbeat_interval_s: int | None,
    id_tags: Mapping[str, IdTag | IdTagStatus] | None,
    next_transaction_id: int | None,
    data_transfer: Mapping[str, str] | None,
    password: str | None,
    passwords: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The server's configuration keys (camelCase, csms/README.md) for what is not None."""
    out: dict[str, Any] = {}
    if boot_status is not None:
        out["bootStatus"] = boot_status
    if heartbeat_interval_s is not None:
        out["heartbeatInterval"] = heartbeat_interval_s
    if id_tags is not None:
        out["idTags"] = {
            tag: (IdTag(status=info) if isinstance(info, str) else info).to_json()
            for tag, info in id_tags.items()
        }
    if next_transaction_id is not None:
        out["nextTransactionId"] = next_transaction_id
    if data_transfer is not None:
        out["dataTransfer"] = {vendor: {"status": s} for vendor, s in data_transfer.items()}
    if password is not None or passwords is not None:
        out["auth"] = {"password": password, "passwords": dict(passwords or {})}
    return out


def _violation(v: dict[str, Any]) -> Violation:
    return Violation(
        index=v["i"],
        ts=v["ts"],
        identity=v["identity"],
        direction=v["direction"],
        kind=v["kind"],
        action=v["action"],
        message_id=v["messageId"],
        error_code=v["errorCode"],
        error=v["error"],
        details=v["details"],
        payload=v["payload"],
    )


def _poll(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


async def _poll_async(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
