"""Validation of a mapping's ``nodeSelector`` (the semantics are in spookd.config.labels)."""

from __future__ import annotations

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spookd.config.labels import (
    DOES_NOT_EXIST,
    EXISTS,
    OPERATORS,
    LabelRequirement,
    LabelSelector,
    label_key_problem,
    label_value_problem,
)
from spookd.config.report import Report
from spookd.config.rules import suggest
from spookd.config.yamlnodes import STR, describe, is_null, tag

_SELECTOR_KEYS = ("matchLabels", "matchExpressions")
_REQUIREMENT_KEYS = ("key", "operator", "values")


def node_selector(report: Report, path: str, node: Node) -> LabelSelector | None:
    """The ``nodeSelector`` mapping: ``matchLabels`` and ``matchExpressions``, at least one entry."""
    if not isinstance(node, MappingNode):
        report.error(
            path,
            node,
            f"nodeSelector must be a mapping with `matchLabels` or `matchExpressions`, got {describe(node)}",
        )
        return None
    errors = len(report.errors)
    keys = report.keys(path, node, _SELECTOR_KEYS, ())
    labels = _match_labels(report, f"{path}.matchLabels", keys.get("matchLabels"))
    expressions = report.items(
        f"{path}.matchExpressions",
        keys.get("matchExpressions"),
        lambda p, n: _requirement(report, p, n),
    )
    if len(report.errors) > errors:
        return None
    if not labels and not expressions:
        report.error(
            path,
            node,
            "an empty nodeSelector would select every node; give `matchLabels` or `matchExpressions` "
            "(for every node: `matchExpressions: [{key: kubernetes.io/hostname, operator: Exists}]`)",
        )
        return None
    return LabelSelector(match_labels=labels, match_expressions=tuple(expressions))


def _label_string(report: Report, path: str, node: Node, what: str) -> str | None:
    if not isinstance(node, ScalarNode) or tag(node) != STR:
        hint = f'; quote it: "{node.value}"' if isinstance(node, ScalarNode) else ""
        report.error(path, node, f"{what} must be a string, got {describe(node)}{hint}")
        return None
    return str(node.value)


def _match_labels(report: Report, path: str, node: Node | None) -> tuple[tuple[str, str], ...]:
    if node is None or is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        report.error(
            path, node, f"matchLabels must be a mapping of label keys to values, got {describe(node)}"
        )
        return ()
    out: dict[str, str] = {}
    for key_node, value_node in node.value:
        shown = key_node.value if isinstance(key_node, ScalarNode) else describe(key_node)
        sub = f"{path}.{shown}"
        key = _label_string(report, sub, key_node, "a label key")
        if key is None:
            continue
        problem = label_key_problem(key)
        if problem is not None:
            report.error(sub, key_node, problem)
            continue
        if key in out:
            report.error(sub, key_node, f"duplicate label key `{key}`")
            continue
        value = _label_string(report, sub, value_node, "a label value")
        if value is None:
            continue
        problem = label_value_problem(value)
        if problem is not None:
            report.error(sub, value_node, problem)
            continue
        out[key] = value
    return tuple(sorted(out.items()))


def _requirement(report: Report, path: str, node: Node) -> LabelRequirement | None:
    if not isinstance(node, MappingNode):
        report.error(path, node, f"expected a mapping with `key` and `operator`, got {describe(node)}")
        return None
    errors = len(report.errors)
    keys = report.keys(path, node, _REQUIREMENT_KEYS, ("key", "operator"))
    key = None
    if "key" in keys:
        key = _label_string(report, f"{path}.key", keys["key"], "key")
        if key is not None and (problem := label_key_problem(key)) is not None:
            report.error(f"{path}.key", keys["key"], problem)
    operator = None
    if "operator" in keys:
        operator = _label_string(report, f"{path}.operator", keys["operator"], "operator")
        if operator is not None and operator not in OPERATORS:
            hint = suggest(operator, OPERATORS)
            report.error(
                f"{path}.operator",
                keys["operator"],
                f"operator `{operator}` is not one of In, NotIn, Exists, DoesNotExist"
                + (hint if "did you mean" in hint else ""),
            )
            operator = None
    values = _values(report, f"{path}.values", keys.get("values"))
    if len(report.errors) > errors or key is None or operator is None or values is None:
        return None
    if operator in (EXISTS, DOES_NOT_EXIST) and values:
        report.error(
            f"{path}.values", keys["values"], f"operator {operator} takes no values; remove `values`"
        )
        return None
    if operator not in (EXISTS, DOES_NOT_EXIST) and not values:
        report.error(
            path, node, f'operator {operator} needs a non-empty list of `values`, like `values: ["a"]`'
        )
        return None
    return LabelRequirement(key=key, operator=operator, values=tuple(sorted(set(values))))


def _values(report: Report, path: str, node: Node | None) -> list[str] | None:
    if node is None or is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        report.error(path, node, f"values must be a list of label values, got {describe(node)}")
        return None
    out: list[str] = []
    ok = True
    for i, item in enumerate(node.value):
        value = _label_string(report, f"{path}[{i}]", item, "a label value")
        if value is None:
            ok = False
            continue
        problem = label_value_problem(value)
        if problem is not None:
            report.error(f"{path}[{i}]", item, problem)
            ok = False
            continue
        out.append(value)
    return out if ok else None
