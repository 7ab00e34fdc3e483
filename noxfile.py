"""Every project task: `nox -l` lists them; `nox` runs lint, typecheck, tests and e2e."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "e2e"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, including the real kubelet device manager and kube-apiserver (built from Go)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The walkthrough typed with kubectl on a real one-node cluster, Spookd as a DaemonSet (root)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_e2e.py",
        "tests/test_e2e_admission.py",
        "tests/test_e2e_dra.py",
        "tests/test_e2e_race.py",
        env={"SPOOKD_E2E": "1"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check; the import layers of STYLE.md."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "spookd", "tests", "noxfile.py", "proto", "tools")
    session.run("ruff", "format", "--check", "spookd", "tests", "noxfile.py", "proto", "tools")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[lint,test]")
    session.run("mypy")


@nox.session(python=PYTHON)
def proto(session: nox.Session) -> None:
    """Regenerate spookd/_proto from proto/ (betterproto2, async client and server)."""
    session.install(".[proto]")
    session.run("python", "proto/generate.py")


@nox.session(python=PYTHON)
def schema(session: nox.Session) -> None:
    """Regenerate docs/config.schema.json and the chart's deviceMapping schema from the config model."""
    session.install("-e", ".")
    session.run("python", "tools/generate_schema.py")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Spookd on the walkthrough config against a kubelet; prints resources and an allocation."""
    session.install("-e", ".[test]")
    session.run("python", "tests/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (warnings are errors)."""
    session.install("mkdocs==1.6.1")
    session.run("python", "-m", "mkdocs", "build", "--strict")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the Go reference plugin; writes docs/benchmarks.md (not part of the tests)."""
    session.install("-e", ".[test]", "pyinstrument")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=PYTHON)
def fmt(session: nox.Session) -> None:
    """Format and fix what ruff can fix."""
    session.install("ruff==0.17.6")
    session.run("ruff", "format", "spookd", "tests", "noxfile.py", "proto", "tools")
    session.run("ruff", "check", "--fix", "spookd", "tests", "noxfile.py", "proto", "tools")
