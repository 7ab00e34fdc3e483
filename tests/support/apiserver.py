"""A real kube-apiserver for tests, and a small REST client for it (stdlib only).

``ApiServer.start(workdir)`` builds ``tests/go/cmd/apiserver`` (k8s.io/kubernetes'
own test server on an embedded etcd, authorization Node,RBAC), starts it and waits
for its ready line. ``.kubeconfig`` is an admin kubeconfig (group system:masters)
for kubectl, helm or kubernetes-asyncio; ``.client()`` talks REST directly.
``.restart()`` stops the API server and starts a new one on the same etcd, behind
the same address, CA and token, so a client holding the kubeconfig sees an outage
and a recovery, as in a control-plane upgrade.

Numbers on the 2-core development machine: build about 3 min cold, 13-18 s after
a change in the module, 10 s when nothing changed (the link); start about 3.5 s;
restart about 4 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from support import gobuild

__all__ = ["ApiClient", "ApiError", "ApiServer", "ApiServerError", "Response"]

_START_TIMEOUT = 120.0
_LOG_TAIL = 6000


class ApiServerError(RuntimeError):
    """The API server could not be built, started or controlled."""


class ApiError(RuntimeError):
    """The API server answered a request with an unexpected status."""

    def __init__(self, method: str, path: str, response: Response) -> None:
        self.response = response
        message = response.json.get("message", response.text) if response.json else response.text
        super().__init__(f"{method} {path}: HTTP {response.status}: {message}")


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, body as text and (when it is JSON) parsed, warnings."""

    status: int
    text: str
    json: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


class ApiServer:
    """A running ``tests/go/cmd/apiserver`` process."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        reader: threading.Thread,
        lines: queue.Queue[str | None],
        workdir: Path,
        ready: Mapping[str, Any],
    ) -> None:
        self._process = process
        self._reader = reader
        self._lines = lines
        self.workdir = workdir
        self.server: str = ready["server"]
        self.kubeconfig = Path(ready["kubeconfig"])
        self.ca_file = Path(ready["caFile"])
        self.token: str = ready["token"]
        self.etcd: str = ready["etcd"]
        #: Seconds from process start to ready (etcd, certificates, API server).
        self.start_seconds: float = float(ready["startSeconds"])
        #: Seconds the Go build took in this test process (0 if it was cached here).
        self.build_seconds: float = gobuild.BUILD_SECONDS.get("apiserver", 0.0)

    @classmethod
    def start(
        cls, workdir: Path, *, timeout: float = _START_TIMEOUT, address: str = "127.0.0.1"
    ) -> ApiServer:
        """Build, launch and wait until the API server serves; raise ApiServerError.

        ``address``: where clients reach it; another than loopback also makes it the
        ``kubernetes`` Service's endpoint (see tests/go/cmd/apiserver).
        """
        binary = gobuild.build("apiserver")
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "apiserver.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(binary), "-workdir", str(workdir), "-address", address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process, lines), daemon=True)
        reader.start()
        try:
            ready = _await_event(process, lines, {"ready"}, timeout, log_path)
        except BaseException:
            _stop(process)
            reader.join(timeout=10)
            raise
        return cls(process, reader, lines, workdir, ready)

    @property
    def log_path(self) -> Path:
        """The API server's and etcd's log (its stderr)."""
        return self.workdir / "apiserver.log"

    def client(self, *, token: str | None = None, impersonate: str | None = None) -> ApiClient:
        """A REST client as the admin (or with ``token``), optionally impersonating a user."""
        return ApiClient(self.server, token or self.token, self.ca_file, impersonate=impersonate)

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A token the API server issues for a service account (TokenRequest), as a pod gets."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        answer = self.client().request("POST", path, body=body)
        if answer.status != 201:
            raise ApiError("POST", path, answer)
        token: str = answer.json["status"]["token"]
        return token

    def write_kubeconfig(self, path: Path, token: str, *, namespace: str = "default") -> Path:
        """Write a kubeconfig that authenticates with ``token`` (JSON, which is valid YAML)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "spookd-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "spookd-test",
                    "context": {"cluster": "spookd-test", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "spookd-test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def restart(self, *, timeout: float = _START_TIMEOUT) -> float:
        """Stop the API server and start a new one on the same etcd; return the seconds taken."""
        return self._command("restart", timeout)

    def down(self, *, timeout: float = _START_TIMEOUT) -> float:
        """Stop the API server; clients get refused connections until ``up()``."""
        return self._command("down", timeout)

    def up(self, *, timeout: float = _START_TIMEOUT) -> float:
        """Start the API server again after ``down()``."""
        return self._command("up", timeout)

    def compact(self, *, timeout: float = _START_TIMEOUT) -> float:
        """Compact etcd at its current revision: watches from older versions get 410 Gone."""
        return self._command("compact", timeout)

    def close(self) -> None:
        """Stop the API server and etcd; idempotent."""
        _stop(self._process)
        self._reader.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _command(self, command: str, timeout: float) -> float:
        if self._process.poll() is not None or self._process.stdin is None:
            raise ApiServerError(f"the API server process has exited:\n{_tail(self.log_path)}")
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        answer = _await_event(self._process, self._lines, {command}, timeout, self.log_path)
        return float(answer.get("startSeconds", 0.0))


class ApiClient:
    """Just enough of the Kubernetes REST API for tests: discovery, create, get, list."""

    def __init__(self, server: str, token: str, ca_file: Path, *, impersonate: str | None = None) -> None:
        self.server = server
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if impersonate is not None:
            self._headers["Impersonate-User"] = impersonate
        self._context = ssl.create_default_context(cafile=str(ca_file))
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | list[Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Response:
        """Send one request; any HTTP status is returned, network errors raise."""
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=timeout) as answer:
                return _response(answer.status, answer.read(), answer.headers.get_all("Warning") or [])
        except urllib.error.HTTPError as error:
            return _response(error.code, error.read(), error.headers.get_all("Warning") or [])

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural resource name, namespaced?) for a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            listing = self.request("GET", base)
            if listing.status == 404:
                raise KeyError(f"the API server serves no {api_version}")
            if listing.status != 200:
                raise ApiError("GET", base, listing)
            for item in listing.json.get("resources", []):
                if "/" not in item["name"]:
                    self._resources[(api_version, item["kind"])] = (
                        item["name"],
                        item["namespaced"],
                    )
            if key not in self._resources:
                raise KeyError(f"the API server serves no {kind} in {api_version}")
        return self._resources[key]

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of a collection, or of one object when name is given."""
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            if not namespace:
                raise ValueError(f"{kind} is namespaced: give a namespace")
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        return base if name is None else f"{base}/{name}"

    def create(self, obj: Mapping[str, Any], *, dry_run: bool = False, strict: bool = True) -> Response:
        """POST an object; dry_run asks for server-side dry-run, strict rejects unknown fields."""
        metadata = obj.get("metadata", {})
        path = self.path(obj["apiVersion"], obj["kind"], metadata.get("namespace"))
        query = {"fieldValidation": "Strict" if strict else "Warn"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("POST", path, body=obj, query=query)

    def ensure(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object for real, or leave the existing one; return the server's copy."""
        answer = self.create(obj)
        if answer.status == 409:
            metadata = obj["metadata"]
            path = self.path(obj["apiVersion"], obj["kind"], metadata.get("namespace"), metadata["name"])
            answer = self.request("GET", path)
        if answer.status not in (200, 201):
            raise ApiError("POST", obj["kind"], answer)
        return answer.json

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """GET one object or raise ApiError."""
        path = self.path(api_version, kind, namespace, name)
        answer = self.request("GET", path)
        if answer.status != 200:
            raise ApiError("GET", path, answer)
        return answer.json


def _response(status: int, raw: bytes, warnings: list[str]) -> Response:
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text) if text else {}
    except json.JSONDecodeError:
        parsed = {}
    return Response(status, text, parsed if isinstance(parsed, dict) else {}, warnings)


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            lines.put(line)
    lines.put(None)


def _await_event(
    process: subprocess.Popen[str],
    lines: queue.Queue[str | None],
    events: set[str],
    timeout: float,
    log_path: Path,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiServerError(
                f"no {'/'.join(sorted(events))} from the API server within {timeout:.0f} s; "
                f"log tail:\n{_tail(log_path)}"
            )
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            process.wait(timeout=10)
            raise ApiServerError(
                f"the API server exited with {process.returncode}; log tail:\n{_tail(log_path)}"
            )
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(message, dict):
            continue
        if message.get("event") == "error":
            raise ApiServerError(
                f"the API server reported: {message.get('error')}; log tail:\n{_tail(log_path)}"
            )
        if message.get("event") in events:
            return message


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        try:
            if process.stdin is not None:
                process.stdin.write("quit\n")
                process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    # stdout is left to the reader thread, which ends at EOF.
    if process.stdin is not None and not process.stdin.closed:
        with contextlib.suppress(OSError):
            process.stdin.close()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL))
            return log.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(no log: {error})"
