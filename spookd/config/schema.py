"""The configuration's JSON Schema, generated from the model (spookd.config.model).

The model holds what a validated configuration means; the YAML spells it another
way: camelCase keys (``instance_id`` is ``instanceID``), ``env`` and ``annotations``
as mappings, durations as text. This module walks the model's msgspec types
(``msgspec.inspect``) and writes the YAML's shape: every object closed
(``additionalProperties: false``), its required keys, the type of every value. A
field added to the model appears in the schema the next time ``nox -s schema`` runs;
a type the walk does not know stops it (``SchemaError``) rather than guessing.

The schema checks shape. Spookd's validator stays the reference for everything else
(duplicate devices, env collisions, reserved names, resource-name rules, paths):
docs/configuration.md#json-schema lists which is which.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec.inspect as mi

from spookd.config import model
from spookd.config.rules import (
    DNS_SUBDOMAIN,
    DURATION,
    ENV_KEY,
    MAX_CAPACITY,
    QUALIFIED_NAME,
    VALID_INSTANCE_ID,
)

DRAFT = "http://json-schema.org/draft-07/schema#"

#: YAML keys that are not the camelCase of their model field.
_KEYS = {"mappings": "deviceMapping"}
#: Required in the YAML although the model has a default for an empty configuration...
_REQUIRED = {("Config", "mappings")}
#: ...and optional in the YAML although the model needs a value (the loader fills it in).
_OPTIONAL = {("DeviceNode", "container_path"), ("DeviceMapping", "hosts")}
#: Objects that need at least one of these keys (a mapping names its nodes one way or both).
_ANY_OF_KEYS: dict[str, tuple[str, ...]] = {"DeviceMapping": ("hosts", "nodeSelector")}
#: What the YAML spells differently from the model's type: (struct, field) → schema.
_SPELLED: dict[tuple[str, str], dict[str, Any]] = {
    ("Device", "env"): {
        "type": "object",
        "propertyNames": {"pattern": f"^{ENV_KEY.pattern}$"},
        "additionalProperties": {"type": ["string", "integer"]},
    },
    ("Device", "annotations"): {"type": "object", "additionalProperties": {"type": "string"}},
    ("HealthCheck", "interval"): {
        "type": ["string", "integer"],
        "pattern": f"^{DURATION.pattern}$",
    },
    ("HealthCheck", "timeout"): {
        "type": ["string", "integer"],
        "pattern": f"^{DURATION.pattern}$",
    },
}
#: Constraints on the value's form that the model's type does not carry.
_FORM: dict[tuple[str, str], dict[str, Any]] = {
    ("DeviceMapping", "hosts"): {"minItems": 1},
    ("Device", "instance_id"): {"pattern": f"^{VALID_INSTANCE_ID.pattern}$"},
    # Necessary, not sufficient: the validator checks the kubernetes.io namespace and lengths.
    ("Device", "resource_name"): {"pattern": f"^{DNS_SUBDOMAIN.pattern}/{QUALIFIED_NAME.pattern}$"},
    ("DeviceNode", "permissions"): {"pattern": "^[rwm]{1,3}$"},
    ("Device", "capacity"): {"minimum": 1, "maximum": MAX_CAPACITY},
    ("LabelRequirement", "operator"): {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
}


class SchemaError(Exception):
    """The model has a type the schema generator does not know how to spell."""


def yaml_key(struct: str, field: str) -> str:
    """The YAML key of a model field: camelCase, ``_id`` as ``ID``."""
    if field in _KEYS:
        return _KEYS[field]
    head, *rest = field.split("_")
    return head + "".join("ID" if part == "id" else part.capitalize() for part in rest)


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a configuration file."""
    definitions: dict[str, Any] = {}
    top = _object(mi.type_info(model.Config), definitions)
    return {
        "$schema": DRAFT,
        "title": "Spookd configuration",
        **top,
        "definitions": dict(sorted(definitions.items())),
    }


def chart_values_schema(values_schema: dict[str, Any], prefix: str = "config.") -> dict[str, Any]:
    """The chart's values schema with ``deviceMapping`` typed by the configuration's schema.

    The configuration's definitions go in as ``definitions["config.<Name>"]`` (replacing
    the ones a previous run put there); the chart's own definitions stay.
    """
    config = _prefixed(config_schema(), prefix)
    own = {k: v for k, v in values_schema.get("definitions", {}).items() if not k.startswith(prefix)}
    previous = values_schema.get("properties", {}).get("deviceMapping", {})
    mapping = {
        **({"description": previous["description"]} if "description" in previous else {}),
        # The chart renders a missing or null deviceMapping as an empty list.
        "type": ["array", "null"],
        "items": config["properties"]["deviceMapping"]["items"],
    }
    return {
        **values_schema,
        "definitions": {**own, **{prefix + k: v for k, v in config["definitions"].items()}},
        "properties": {**values_schema.get("properties", {}), "deviceMapping": mapping},
    }


def _prefixed(schema: Any, prefix: str) -> Any:
    """``schema`` with every ``#/definitions/X`` reference made ``#/definitions/<prefix>X``."""
    if isinstance(schema, dict):
        ref = "#/definitions/"
        return {
            k: v.replace(ref, ref + prefix, 1) if k == "$ref" else _prefixed(v, prefix)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_prefixed(v, prefix) for v in schema]
    return schema


def render(schema: dict[str, Any]) -> str:
    """The schema as the checked-in files hold it: JSON, a value on one line where it fits."""
    return _dump(schema, 0) + "\n"


def _dump(value: Any, indent: int, lead: int = 0, width: int = 110) -> str:
    """``value`` as JSON at ``indent`` after ``lead`` characters of its line."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + lead + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = " " * (indent + 2)
    if isinstance(value, list):
        parts = [inner + _dump(v, indent + 2) for v in value]
    else:
        parts = []
        for k, v in value.items():
            key = json.dumps(k) + ": "
            parts.append(inner + key + _dump(v, indent + 2, len(key)))
    opening, closing = ("[", "]") if isinstance(value, list) else ("{", "}")
    return opening + "\n" + ",\n".join(parts) + "\n" + " " * indent + closing


def _object(info: mi.Type, definitions: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(info, mi.StructType):
        raise SchemaError(f"cannot spell {info!r} in the configuration's JSON Schema")
    name = info.cls.__name__
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in info.fields:
        where = (name, field.name)
        key = yaml_key(name, field.name)
        optional = (not field.required or where in _OPTIONAL) and where not in _REQUIRED
        schema = dict(_SPELLED[where]) if where in _SPELLED else _value(field.type, definitions)
        schema.update(_FORM.get(where, {}))
        if optional and schema.get("type") in ("array", "object") and "$ref" not in schema:
            # An optional list or mapping may be written as null: it means empty.
            schema["type"] = [schema["type"], "null"]
        properties[key] = schema
        if not optional:
            required.append(key)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    if name in _ANY_OF_KEYS:
        out["anyOf"] = [{"required": [key]} for key in _ANY_OF_KEYS[name]]
    out["properties"] = properties
    return out


def _value(info: mi.Type, definitions: dict[str, Any]) -> dict[str, Any]:
    if isinstance(info, mi.UnionType):
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(kinds) != 1:
            raise SchemaError(f"cannot spell {info!r} in the configuration's JSON Schema")
        # `None` is how the model says "not given"; the YAML leaves the key out.
        return _value(kinds[0], definitions)
    if isinstance(info, mi.StrType):
        return {"type": "string"}
    if isinstance(info, mi.BoolType):
        return {"type": "boolean"}
    if isinstance(info, mi.IntType):
        out: dict[str, Any] = {"type": "integer"}
        if info.ge is not None:
            out["minimum"] = info.ge
        if info.le is not None:
            out["maximum"] = info.le
        return out
    if isinstance(info, mi.LiteralType):
        return {"enum": list(info.values)}
    if isinstance(info, mi.VarTupleType | mi.ListType):
        item = info.item_type
        if (
            isinstance(item, mi.TupleType)
            and len(item.item_types) == 2
            and all(isinstance(t, mi.StrType) for t in item.item_types)
        ):
            # Pairs of strings are how the model keeps a YAML mapping of names to text.
            return {"type": "object", "additionalProperties": {"type": "string"}}
        return {"type": "array", "items": _value(item, definitions)}
    if isinstance(info, mi.StructType):
        name = info.cls.__name__
        if name not in definitions:
            definitions[name] = {}  # recursion guard
            definitions[name] = _object(info, definitions)
        return {"$ref": f"#/definitions/{name}"}
    raise SchemaError(f"cannot spell {info!r} in the configuration's JSON Schema")
