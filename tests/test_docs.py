"""The documentation site builds, and covers every flag, configuration key, error and metric.

Each test reads the facts from the code (the argument parser, the loader's key
tuples and message strings, the metrics registry, the import-linter contract), so a
new flag, key, message or metric that is not documented fails here.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spookd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    """Whitespace collapsed, so a message may wrap across lines in the Markdown."""
    return " ".join(text.split())


def _code(text: str, name: str) -> bool:
    """True if ``name`` appears as the start of an inline code span in ``text``."""
    return re.search("`" + re.escape(name) + r"(?![\w-])", text) is not None


# -- the site --------------------------------------------------------------------


def test_docs_build_strictly_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        "mkdocs build --strict failed (is mkdocs installed? see docs/index.md):\n"
        + result.stdout
        + result.stderr
    )
    site = tmp_path / "site"
    assert (site / "index.html").exists()
    for page in (
        "design",
        "operator-guide",
        "configuration",
        "cli",
        "metrics",
        "troubleshooting",
        "benchmarks",
    ):
        assert (site / page / "index.html").exists(), page


def test_benchmarks_page_keeps_its_title() -> None:
    assert _page("benchmarks.md").lstrip().startswith("# Benchmarks\n")


# -- command line ----------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and "--help" not in a.option_strings]


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def test_every_subcommand_and_flag_is_in_the_cli_page() -> None:
    cli = _page("cli.md")
    parser = build_parser()
    subcommands = _subcommands(parser)
    assert {"run", "validate", "render"} <= subcommands.keys()
    missing = [_flag(a) for a in _options(parser) if not _code(cli, _flag(a))]
    for name, sub in subcommands.items():
        if f"## `spookd {name}`" not in cli:
            missing.append(f"section ## `spookd {name}`")
        missing += [
            f"{name} {flag}" for a in _options(sub) for flag in a.option_strings if not _code(cli, flag)
        ]
    assert not missing, f"docs/cli.md does not mention: {missing}"


def _defaults(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, object]:
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("SPOOKD_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        subcommands = _subcommands(build_parser())
        return {f"{name} {_flag(a)}": a.default for name, sub in subcommands.items() for a in _options(sub)}


def _variable(flag: str) -> str:
    return "SPOOKD_" + flag.removeprefix("--").upper().replace("-", "_")


def test_every_spookd_variable_and_default_is_in_the_cli_page(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = _page("cli.md")
    plain = _defaults(monkeypatch, {})
    flags = [key.split(" ", 1)[1] for key in plain]
    # "1" differs from every default and turns boolean flags on.
    with_env = _defaults(monkeypatch, {_variable(flag): "1" for flag in flags})
    read = {_variable(key.split(" ", 1)[1]) for key in plain if plain[key] != with_env[key]}
    assert "SPOOKD_LOG_LEVEL" in read, "the probe for SPOOKD_* variables found nothing"
    missing = sorted(v for v in read if not _code(cli, v))
    assert not missing, f"docs/cli.md does not name these variables: {missing}"
    claimed = set(re.findall(r"`(SPOOKD_[A-Z][A-Z_]*)`", cli))
    assert not claimed - read, f"docs/cli.md names variables no flag reads: {sorted(claimed - read)}"
    shown = [
        f"{key} default {value!r}"
        for key, value in plain.items()
        if isinstance(value, str) and value and f"`{value}`" not in cli
    ]
    assert not shown, f"docs/cli.md does not show these defaults: {shown}"


# -- configuration ---------------------------------------------------------------


def _loader_keys() -> dict[str, tuple[str, ...]]:
    from spookd import naming
    from spookd.config import hostdevices, selectors, validate

    keys = {
        name: tuple(sorted(value)) if isinstance(value, frozenset | set) else tuple(value)
        for module in (validate, hostdevices, selectors)
        for name, value in vars(module).items()
        if re.fullmatch(r"_[A-Z_]*KEYS", name) and isinstance(value, tuple | frozenset | set)
    }
    keys["_RESERVED_ENV_KEYS"] = tuple(sorted(naming.RESERVED_ENV_KEYS))
    assert {"_TOP_KEYS", "_MAPPING_KEYS", "_DEVICE_KEYS"} <= keys.keys(), sorted(keys)
    return keys


def test_every_configuration_key_is_in_the_reference() -> None:
    reference = _page("configuration.md")
    keys = _loader_keys()
    missing = [
        f"{group}: {key}" for group, values in keys.items() for key in values if not _code(reference, key)
    ]
    assert not missing, f"docs/configuration.md does not mention: {missing}"
    fields = [*keys["_TOP_KEYS"], *keys["_MAPPING_KEYS"], *keys["_DEVICE_KEYS"]]
    sections = [key for key in fields if f"### `{key}`" not in reference]
    assert not sections, f"docs/configuration.md has no section for: {sections}"


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """Docstrings, regular expressions and comparisons: strings that are not messages."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        ):
            skip.add(id(node.body[0].value))
        is_pattern = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"compile", "fullmatch", "match"}
        )
        if is_pattern or isinstance(node, ast.Compare):
            skip.update(id(child) for child in ast.walk(node))
    return skip


def _fragments(nodes: list[ast.AST], skip: set[int]) -> set[str]:
    out: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                text = _flat(node.value).strip(" ;:,()`'\"")
                if " " in text and len(text) >= 8:
                    out.add(text)
    return out


def _loader_message_fragments() -> set[str]:
    """Every literal piece of text the loader (spookd/config) can put into an error message."""
    out: set[str] = set()
    for path in sorted((ROOT / "spookd/config").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        out |= _fragments([tree], _skipped_nodes(tree))
    return out


def _source_message_fragments() -> set[str]:
    """The messages of the ConfigError objects that the configuration sources build."""
    out: set[str] = set()
    for path in sorted((ROOT / "spookd/sources").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls: list[ast.AST] = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "ConfigError"
        ]
        out |= _fragments(calls, _skipped_nodes(tree))
    return out


def test_every_loader_error_message_is_in_the_reference() -> None:
    reference = _flat(_page("configuration.md"))
    fragments = _loader_message_fragments()
    assert len(fragments) > 40, "found too few messages in spookd/config"
    missing = sorted(f for f in fragments if f not in reference)
    assert not missing, "docs/configuration.md lacks these loader messages:\n" + "\n".join(missing)


def test_every_source_error_message_is_in_the_reference() -> None:
    reference = _flat(_page("configuration.md"))
    fragments = _source_message_fragments()
    assert fragments, "found no ConfigError messages in spookd/sources"
    missing = sorted(f for f in fragments if f not in reference)
    assert not missing, "docs/configuration.md lacks these source messages:\n" + "\n".join(missing)


# -- metrics ---------------------------------------------------------------------


def _exposed_metrics() -> dict[str, tuple[str, ...]]:
    """Every metric name as /metrics exposes it, with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from spookd.observe import metrics

    suffix = {"counter": "_total", "info": "_info"}
    exposed: dict[str, tuple[str, ...]] = {}
    for family in metrics.REGISTRY.collect():
        exposed[family.name + suffix.get(family.type, "")] = ()
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                exposed.setdefault(sample.name, ())
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + suffix.get(value._type or "", "")
            assert name in exposed, f"{name} is not in spookd.observe.metrics.REGISTRY"
            exposed[name] = tuple(value._labelnames)
    return exposed


def test_every_metric_and_label_is_in_the_metrics_page() -> None:
    page = _page("metrics.md")
    exposed = _exposed_metrics()
    assert "spookd_kubelet_restarts_total" in exposed
    missing = [name for name in exposed if not _code(page, name)]
    missing += [
        f"{name} label {label}"
        for name, labels in exposed.items()
        for label in labels
        if not _code(page, label)
    ]
    assert not missing, f"docs/metrics.md does not mention: {missing}"


def test_health_endpoints_are_described() -> None:
    page = _page("metrics.md")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f"## `{path}`" in page, path


# -- design ----------------------------------------------------------------------


def test_design_names_every_module_of_the_import_contracts() -> None:
    design = _page("design.md")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = project["tool"]["importlinter"]["contracts"]
    assert contracts
    missing: list[str] = []
    for contract in contracts:
        if contract["name"] not in design:
            missing.append(f"contract {contract['name']!r}")
        for key in ("source_modules", "forbidden_modules"):
            missing += [m for m in contract.get(key, []) if not _code(design, m)]
    assert not missing, f"docs/design.md does not mention: {missing}"
