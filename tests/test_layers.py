"""docs/design.md's picture of the layers is the code's (STYLE.md: a stale claim fails)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text()


def _section(title: str) -> str:
    start = DESIGN.index(f"## {title}\n")
    end = DESIGN.find("\n## ", start + 1)
    return DESIGN[start:end]


def _table_rows(text: str, header: str) -> list[list[str]]:
    lines = text[text.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(cells)
    return rows


def _modules(cell: str) -> list[str]:
    return re.findall(r"`(spookd[\w.]*)`", cell)


def test_the_layer_table_is_the_layers_contract() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    documented = [_modules(cells[1]) for cells in _table_rows(_section("Layers"), "| layer | modules |")]
    assert documented == [[m.strip() for m in re.split(r"[|:]", layer)] for layer in layers]


def test_every_package_module_belongs_to_a_layer() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    named = {m.strip() for layer in layers for m in re.split(r"[|:]", layer)}
    graph = grimp.build_graph("spookd", cache_dir=None)
    top = {".".join(m.split(".")[:2]) for m in graph.modules if m.count(".") >= 1}
    assert top - named - {"spookd._proto"} == set()


def test_who_imports_each_client_is_what_the_design_page_says() -> None:
    graph = grimp.build_graph("spookd", include_external_packages=True, cache_dir=None)
    rows = _table_rows(_section("Layers"), "| package | imported directly by |")
    assert rows, "the table of clients is missing"
    for package, importers in rows:
        actual = sorted(
            m
            for m in graph.find_modules_that_directly_import(package)
            if m.startswith("spookd") and not m.startswith("spookd._proto")
        )
        assert actual == sorted(_modules(importers)), f"docs/design.md is wrong about {package}"
