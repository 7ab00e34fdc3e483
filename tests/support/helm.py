"""Helm, built from its Go module at a pinned version, for the chart tests.

``helm_binary()`` installs ``helm.sh/helm/v3/cmd/helm@HELM_VERSION`` into
``tests/go/.bin`` with ``go install`` (GOBIN), with the same version stamps the
release Makefile sets (so ``helm version`` and the default Kubernetes version of
``helm template`` are right), and reuses it while the version matches. About 2 min
cold on the 2-core development machine (downloads included), instant afterwards.

Server-side dry-runs need no kubectl: ``support.apiserver.ApiClient`` POSTs
each rendered object with ``dryRun=All`` and ``fieldValidation=Strict``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from support import gobuild

__all__ = [
    "BUILD_SECONDS",
    "HELM_VERSION",
    "KUBE_VERSION",
    "Helm",
    "HelmError",
    "helm_binary",
    "load_documents",
]

#: The Helm release the chart is tested with.
HELM_VERSION = "v3.22.0"
#: Kubernetes minor version of the client libraries Helm v3.22 is built with.
_HELM_K8S_MINOR = "37"
#: What the chart is rendered for: the version of the API server the tests run.
KUBE_VERSION = "v1.37.2"

#: Seconds the last ``go install`` of Helm took in this process (0: it was reused).
BUILD_SECONDS: dict[str, float] = {}


class HelmError(RuntimeError):
    """Helm could not be built, or a helm command failed."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def helm_binary() -> Path:
    """Path to Helm HELM_VERSION in tests/go/.bin, installing it first if needed."""
    gobuild.BIN_DIR.mkdir(parents=True, exist_ok=True)
    binary = gobuild.BIN_DIR / "helm"
    with (gobuild.BIN_DIR / ".helm.lock").open("w") as lock:
        # Several test processes may want Helm at once; one installs it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(binary) == HELM_VERSION:
            return binary
        ldflags = " ".join(
            [
                "-s -w",
                f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
                f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={_HELM_K8S_MINOR}",
                "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
                f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={_HELM_K8S_MINOR}",
            ]
        )
        started = time.monotonic()
        proc = subprocess.run(
            [
                gobuild.go_binary(),
                "install",
                "-ldflags",
                ldflags,
                f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
            ],
            # Outside tests/go: `go install pkg@version` ignores the current module.
            cwd=gobuild.BIN_DIR,
            env=_go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        BUILD_SECONDS["helm"] = time.monotonic() - started
        if proc.returncode != 0:
            raise HelmError(
                f"go install helm {HELM_VERSION} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        if _installed_version(binary) != HELM_VERSION:
            raise HelmError(f"{binary} does not report {HELM_VERSION} after go install")
        return binary


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOBIN"] = str(gobuild.BIN_DIR)
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -trimpath").strip()
    return env


def _installed_version(binary: Path) -> str | None:
    if not binary.exists():
        return None
    proc = subprocess.run(
        [str(binary), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream into plain dicts, skipping empty documents."""
    yaml = YAML(typ="safe", pure=True)
    return [doc for doc in yaml.load_all(text) if isinstance(doc, dict)]


@dataclass(frozen=True)
class Helm:
    """Runs one Helm binary against a chart directory."""

    binary: Path
    chart: Path

    @classmethod
    def build(cls, chart: Path) -> Helm:
        """Helm HELM_VERSION (installed if needed) for the chart at ``chart``."""
        return cls(helm_binary(), chart)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``helm ARGS``; with check, a non-zero exit raises HelmError with stderr."""
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise HelmError(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}",
                stderr=proc.stderr,
            )
        return proc

    def lint(self, values: Iterable[Path] = (), *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``helm lint --strict`` of the chart with the given values files."""
        args = ["lint", str(self.chart), "--strict", "--kube-version", KUBE_VERSION]
        for path in values:
            args += ["--values", str(path)]
        return self.run(*args, check=check)

    def template_args(
        self,
        release: str,
        namespace: str,
        values: Iterable[Path] = (),
        set_json: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The arguments of ``helm template`` for these inputs."""
        args = ["template", release, str(self.chart), "--namespace", namespace]
        args += ["--kube-version", KUBE_VERSION]
        for path in values:
            args += ["--values", str(path)]
        for key, raw in (set_json or {}).items():
            args += ["--set-json", f"{key}={raw}"]
        return args

    def template(
        self,
        release: str,
        namespace: str,
        values: Sequence[Path] = (),
        set_json: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Render the chart and return its objects."""
        proc = self.run(*self.template_args(release, namespace, values, set_json))
        return load_documents(proc.stdout)
