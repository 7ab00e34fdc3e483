"""Node label selectors: Kubernetes LabelSelector semantics (pure), validation with places, render."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spookd.config import ConfigInvalid, load_config
from spookd.config.labels import LabelRequirement, LabelSelector, parse_labels

KEYS = st.sampled_from(["gpu", "example.com/lab", "zone", "kubernetes.io/hostname"])
VALUES = st.sampled_from(["", "a", "b", "true", "lab-1"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)
OPERATORS = st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])


def requirement(key: str, operator: str, values: list[str]) -> LabelRequirement:
    needs_values = operator in ("In", "NotIn")
    return LabelRequirement(key, operator, tuple(sorted(set(values))) if needs_values else ())


def test_each_operator_as_kubernetes_defines_it() -> None:
    labels = {"gpu": "true", "zone": "a"}
    assert LabelRequirement("zone", "In", ("a", "b")).matches(labels)
    assert not LabelRequirement("zone", "In", ("b",)).matches(labels)
    assert not LabelRequirement("rack", "In", ("a",)).matches(labels), "In needs the key"
    assert LabelRequirement("zone", "NotIn", ("b",)).matches(labels)
    assert not LabelRequirement("zone", "NotIn", ("a",)).matches(labels)
    assert LabelRequirement("rack", "NotIn", ("a",)).matches(labels), "NotIn matches a missing key"
    assert LabelRequirement("gpu", "Exists").matches(labels)
    assert not LabelRequirement("rack", "Exists").matches(labels)
    assert LabelRequirement("rack", "DoesNotExist").matches(labels)
    assert not LabelRequirement("gpu", "DoesNotExist").matches(labels)
    assert LabelRequirement("empty", "Exists").matches({"empty": ""}), "an empty value still exists"


@given(LABELS, KEYS, st.lists(VALUES, min_size=1, max_size=3))
def test_not_in_is_the_negation_of_in(labels: dict[str, str], key: str, values: list[str]) -> None:
    assert requirement(key, "NotIn", values).matches(labels) != requirement(key, "In", values).matches(labels)


@given(LABELS, KEYS)
def test_does_not_exist_is_the_negation_of_exists(labels: dict[str, str], key: str) -> None:
    assert requirement(key, "DoesNotExist", []).matches(labels) != requirement(key, "Exists", []).matches(
        labels
    )


@given(LABELS, st.dictionaries(KEYS, VALUES, max_size=3))
def test_match_labels_is_in_with_one_value(labels: dict[str, str], wanted: dict[str, str]) -> None:
    as_labels = LabelSelector(match_labels=tuple(sorted(wanted.items())))
    as_expressions = LabelSelector(
        match_expressions=tuple(LabelRequirement(k, "In", (v,)) for k, v in sorted(wanted.items()))
    )
    assert as_labels.matches(labels) == as_expressions.matches(labels)
    assert as_labels.matches(labels) == all(labels.get(k) == v for k, v in wanted.items())


@given(LABELS, st.lists(st.tuples(KEYS, OPERATORS, st.lists(VALUES, min_size=1, max_size=2)), max_size=4))
def test_a_selector_is_the_and_of_its_requirements(
    labels: dict[str, str], parts: list[tuple[str, str, list[str]]]
) -> None:
    requirements = [requirement(*part) for part in parts]
    selector = LabelSelector(match_expressions=tuple(requirements))
    assert selector.matches(labels) == all(r.matches(labels) for r in requirements)


CONFIG = """\
deviceMapping:
  - hosts: [lab1-host1]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001"}
  - nodeSelector:
      matchLabels: {example.com/lab: lab2}
      matchExpressions:
        - {key: gpu, operator: In, values: ["true"]}
        - {key: broken, operator: DoesNotExist}
    devices:
      - {resourceName: example.com/widget, instanceID: "0002"}
  - hosts: [lab1-host2]
    nodeSelector:
      matchExpressions: [{key: scope, operator: Exists}]
    devices:
      - {resourceName: example.com/scope, instanceID: "s1"}
"""


def test_for_node_takes_the_mappings_that_list_the_node_or_select_its_labels() -> None:
    config = load_config(CONFIG, "c.yaml")
    lab2 = {"example.com/lab": "lab2", "gpu": "true"}
    assert config.for_node("other", lab2) == {"example.com/widget": {"0002": config.mappings[1].devices[0]}}
    assert config.for_node("other", {**lab2, "broken": "yes"}) == {}
    assert config.for_node("other", None) == {}, "labels not known yet: a selector selects nothing"
    assert set(config.for_node("lab1-host1", lab2)["example.com/widget"]) == {"0001", "0002"}
    # hosts and nodeSelector beside each other: a listed node, or a selected one
    assert set(config.for_node("lab1-host2", {})) == {"example.com/scope"}
    assert set(config.for_node("elsewhere", {"scope": ""})) == {"example.com/scope"}
    assert config.uses_labels()
    assert not load_config("deviceMapping:\n  - hosts: [a]\n    devices: []\n", "c.yaml").uses_labels()


def test_devices_of_a_selector_mapping_are_shared_when_exclusive() -> None:
    text = "exclusive: true\n" + CONFIG
    config = load_config(text, "c.yaml")
    assert config.shared_devices() == {("example.com/widget", "0002"), ("example.com/scope", "s1")}


def mapping(selector: str) -> str:
    return f"deviceMapping:\n  - nodeSelector:\n{selector}    devices: []\n"


# selector text (indented 6) -> (line, column, YAML path, message fragment)
BAD = {
    "not_mapping": (
        "      [gpu]\n",
        3,
        7,
        "deviceMapping[0].nodeSelector",
        "nodeSelector must be a mapping with `matchLabels` or `matchExpressions`, got a list",
    ),
    "plain_labels": (
        '      gpu: "true"\n',
        3,
        7,
        "deviceMapping[0].nodeSelector.gpu",
        "unknown key `gpu`; expected one of: matchLabels, matchExpressions",
    ),
    "empty": (
        "      {}\n",
        3,
        7,
        "deviceMapping[0].nodeSelector",
        "an empty nodeSelector would select every node",
    ),
    "label_bool": (
        "      matchLabels: {gpu: true}\n",
        3,
        26,
        "deviceMapping[0].nodeSelector.matchLabels.gpu",
        'a label value must be a string, got a boolean; quote it: "true"',
    ),
    "label_key_bad": (
        '      matchLabels: {"-gpu": "x"}\n',
        3,
        21,
        "deviceMapping[0].nodeSelector.matchLabels.-gpu",
        "label key `-gpu` must be a qualified name",
    ),
    "label_value_bad": (
        '      matchLabels: {gpu: "a b"}\n',
        3,
        26,
        "deviceMapping[0].nodeSelector.matchLabels.gpu",
        "label value `a b` must be at most 63 characters",
    ),
    "match_labels_list": (
        "      matchLabels: [gpu]\n",
        3,
        20,
        "deviceMapping[0].nodeSelector.matchLabels",
        "matchLabels must be a mapping of label keys to values, got a list",
    ),
    "operator_case": (
        "      matchExpressions: [{key: gpu, operator: exists}]\n",
        3,
        47,
        "deviceMapping[0].nodeSelector.matchExpressions[0].operator",
        "operator `exists` is not one of In, NotIn, Exists, DoesNotExist; did you mean `Exists`?",
    ),
    "operator_gt": (
        "      matchExpressions: [{key: gpu, operator: Gt, values: ['1']}]\n",
        3,
        47,
        "deviceMapping[0].nodeSelector.matchExpressions[0].operator",
        "operator `Gt` is not one of In, NotIn, Exists, DoesNotExist",
    ),
    "in_without_values": (
        "      matchExpressions: [{key: gpu, operator: In}]\n",
        3,
        26,
        "deviceMapping[0].nodeSelector.matchExpressions[0]",
        'operator In needs a non-empty list of `values`, like `values: ["a"]`',
    ),
    "exists_with_values": (
        "      matchExpressions: [{key: gpu, operator: Exists, values: [a]}]\n",
        3,
        63,
        "deviceMapping[0].nodeSelector.matchExpressions[0].values",
        "operator Exists takes no values; remove `values`",
    ),
    "missing_operator": (
        "      matchExpressions: [{key: gpu}]\n",
        3,
        26,
        "deviceMapping[0].nodeSelector.matchExpressions[0]",
        "missing key `operator`",
    ),
    "value_number": (
        "      matchExpressions: [{key: gpu, operator: In, values: [1]}]\n",
        3,
        60,
        "deviceMapping[0].nodeSelector.matchExpressions[0].values[0]",
        'a label value must be a string, got a number; quote it: "1"',
    ),
    "values_not_list": (
        "      matchExpressions: [{key: gpu, operator: In, values: a}]\n",
        3,
        59,
        "deviceMapping[0].nodeSelector.matchExpressions[0].values",
        "values must be a list of label values, got a string",
    ),
    "expression_not_mapping": (
        "      matchExpressions: [gpu]\n",
        3,
        26,
        "deviceMapping[0].nodeSelector.matchExpressions[0]",
        "expected a mapping with `key` and `operator`, got a string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_selector_is_an_error_with_its_place(case: str) -> None:
    selector, line, column, path, message = BAD[case]
    with pytest.raises(ConfigInvalid) as caught:
        load_config(mapping(selector), "s.yaml")
    errors = caught.value.errors
    assert len(errors) == 1, errors
    error = errors[0]
    assert (error.line, error.column, error.path) == (line, column, path), str(error)
    assert message in error.message


def test_a_mapping_needs_hosts_or_a_node_selector() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_config("deviceMapping:\n  - devices: []\n", "m.yaml")
    assert [str(e) for e in caught.value.errors] == [
        "m.yaml:2:5: deviceMapping[0]: missing key `hosts` (or `nodeSelector`)"
    ]
    with pytest.raises(ConfigInvalid) as caught:
        load_config("deviceMapping:\n  - nodeselector: {}\n    devices: []\n", "m.yaml")
    assert [e.message for e in caught.value.errors] == [
        "unknown key `nodeselector`; did you mean `nodeSelector`?"
    ]


def test_parse_labels_for_a_dry_run() -> None:
    assert parse_labels("gpu=true, example.com/lab=lab2,empty=") == {
        "gpu": "true",
        "example.com/lab": "lab2",
        "empty": "",
    }
    assert parse_labels("") == {}
    with pytest.raises(ValueError, match="must look like KEY=VALUE"):
        parse_labels("gpu")
    with pytest.raises(ValueError, match="label value `a b`"):
        parse_labels("gpu=a b")


def test_render_with_node_labels(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)

    def render(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spookd", "render", str(path), "--node", "n1", "--output", "json", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    selected = render("--node-labels", "example.com/lab=lab2,gpu=true")
    assert selected.returncode == 0, selected.stderr
    out = json.loads(selected.stdout)
    assert out["resources"] == {"example.com/widget": ["0002"]}
    assert out["labels"] == {"example.com/lab": "lab2", "gpu": "true"}
    unlabelled = render()
    assert unlabelled.returncode == 0, unlabelled.stderr
    assert json.loads(unlabelled.stdout)["resources"] == {}
    bad = render("--node-labels", "gpu")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "spookd: error: --node-labels: `gpu` must look like KEY=VALUE"
