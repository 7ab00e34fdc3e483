"""Node label selectors (Kubernetes ``metav1.LabelSelector`` semantics), pure.

A mapping's ``nodeSelector`` holds ``matchLabels`` and ``matchExpressions``; every
one of them must hold for a node to match (they are ANDed, as in Kubernetes). The
operators are the four of a LabelSelector: ``In`` and ``NotIn`` with a non-empty
list of values, ``Exists`` and ``DoesNotExist`` with none. ``NotIn`` matches a node
that lacks the key, as in Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from spookd.config.rules import MAX_NAME, annotation_key_ok

IN = "In"
NOT_IN = "NotIn"
EXISTS = "Exists"
DOES_NOT_EXIST = "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
#: A label value: empty, or up to 63 characters, alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class LabelRequirement(msgspec.Struct, frozen=True, order=True):
    """One entry of ``matchExpressions``: ``key``, ``operator`` and (for In/NotIn) ``values``."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` meets this requirement."""
        value = labels.get(self.key)
        if self.operator == IN:
            return value is not None and value in self.values
        if self.operator == NOT_IN:
            return value is None or value not in self.values
        if self.operator == EXISTS:
            return value is not None
        return value is None


class LabelSelector(msgspec.Struct, frozen=True, order=True):
    """A mapping's ``nodeSelector``: every label and every requirement must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` is selected."""
        return all(labels.get(key) == value for key, value in self.match_labels) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key, or None when it is."""
    if annotation_key_ok(key):
        return None
    return (
        f"label key `{key}` must be a qualified name, optionally with a DNS-subdomain prefix, "
        "like `gpu` or `example.com/lab`"
    )


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None when it is."""
    if len(value) <= MAX_NAME and _LABEL_VALUE.fullmatch(value):
        return None
    return (
        f"label value `{value}` must be at most {MAX_NAME} characters of letters, digits, `-`, `_` "
        "and `.`, starting and ending with a letter or digit (or empty)"
    )


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` as a dict; raise ValueError naming the bad part."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise ValueError(f"`{part}` must look like KEY=VALUE")
        problem = label_key_problem(key) or label_value_problem(value)
        if problem is not None:
            raise ValueError(problem)
        labels[key] = value
    return labels
