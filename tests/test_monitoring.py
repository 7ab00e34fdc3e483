"""The chart's opt-in PrometheusRule and Grafana dashboard: valid for promtool, and only Spookd's metrics.

promtool (built from the Prometheus Go module) checks the rendered rules, and the
dashboard's queries as recording rules, so every expression is real PromQL. Every
metric a query names must be one Spookd exports, with labels Spookd sets or the
Prometheus operator's scrape adds.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helm import Helm
from support.promtool import promtool_binary

from spookd.observe import metrics

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "spookd"
ENABLED = {"metrics.prometheusRule.enabled": "true", "metrics.grafanaDashboard.enabled": "true"}
#: Labels a ServiceMonitor scrape adds to every series, and histogram buckets' `le`.
SCRAPE_LABELS = {"namespace", "pod", "instance", "job", "service", "endpoint", "container", "le"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "unless", "and", "or"}


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.build(CHART)


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    return helm.template("spookd", "kube-system", set_json=ENABLED)


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith("spookd")]
    return found


def _rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in _one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def _dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    configmaps = [o for o in objects if o["kind"] == "ConfigMap" and "spookd.json" in o.get("data", {})]
    (configmap,) = configmaps
    dashboard: dict[str, Any] = json.loads(configmap["data"]["spookd.json"])
    return dashboard


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _exported() -> dict[str, set[str]]:
    """Every series name Spookd exposes, with its label names."""
    exposed: dict[str, set[str]] = {}
    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "info": ["_info"],
        "histogram": ["_bucket", "_sum", "_count"],
    }
    for family in metrics.REGISTRY.collect():
        labels: set[str] = set()
        for value in vars(metrics).values():
            if getattr(value, "_name", None) == family.name:
                labels = set(value._labelnames)
        if family.type == "info":
            labels = {"version"}
        for suffix in suffixes[family.type]:
            exposed[family.name + suffix] = labels
    return exposed


def test_nothing_is_rendered_unless_asked(helm: Helm) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in helm.template("spookd", "kube-system")}
    assert not any(kind == "PrometheusRule" for kind, _ in kinds)
    assert ("ConfigMap", "spookd-dashboard") not in kinds


def test_the_dashboard_is_labelled_for_the_grafana_sidecar(rendered: list[dict[str, Any]]) -> None:
    (configmap,) = [
        o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "spookd-dashboard"
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = _dashboard(rendered)
    assert dashboard["uid"] == "spookd"
    assert len(dashboard["panels"]) >= 8


def test_promtool_accepts_the_rules_and_the_dashboards_queries(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    promtool = promtool_binary()
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _one(rendered, "PrometheusRule")["spec"]["groups"]}))
    queries = tmp_path / "dashboard.yaml"
    recording = [
        {"record": f"spookd:dashboard_query_{n}", "expr": expr}
        for n, expr in enumerate(_dashboard_queries(_dashboard(rendered)))
    ]
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    for path in (rules, queries):
        proc = subprocess.run(
            [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"promtool rejects {path.name}:\n{proc.stdout}{proc.stderr}"
    alerts = {r["alert"] for r in _rules(rendered)}
    assert alerts == {"SpookdConfigRejected", "SpookdRegistrationFailing", "SpookdDevicesUnhealthy"}


def _names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no label values, no regexes
    text = re.sub(r"\$\w+", "", text)
    names = set(re.findall(r"\bspookd_[a-z_]+\b", text))
    labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", text))
    for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", text):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    return names, labels - PROMQL_WORDS


def test_every_query_names_only_metrics_and_labels_spookd_exports(rendered: list[dict[str, Any]]) -> None:
    exported = _exported()
    assert "spookd_devices" in exported
    assert "spookd_allocate_duration_seconds_bucket" in exported
    queries = [r["expr"] for r in _rules(rendered)] + _dashboard_queries(_dashboard(rendered))
    dashboard = _dashboard(rendered)
    queries += [
        v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    problems = []
    for query in queries:
        names, labels = _names_and_labels(query)
        assert names, f"no Spookd metric in {query!r}"
        unknown = names - exported.keys()
        allowed = set().union(*(exported.get(n, set()) for n in names)) | SCRAPE_LABELS
        problems += [f"{query!r}: metric {n}" for n in sorted(unknown)]
        problems += [f"{query!r}: label {label}" for label in sorted(labels - allowed)]
    assert not problems, "queries name what Spookd does not export:\n" + "\n".join(problems)


def test_the_label_check_catches_a_wrong_label() -> None:
    names, labels = _names_and_labels('sum by (resource, node) (spookd_devices{health="Unhealthy"})')
    assert names == {"spookd_devices"}
    assert labels == {"resource", "node", "health"}
