"""The configuration's JSON Schema (docs/config.schema.json) and the chart's use of it.

The schema is generated from the model (spookd.config.schema); these tests check that
the checked-in files are what `nox -s schema` writes, that the schema's keys are the
loader's, that every good configuration validates and that it rejects every bad one
of the corpus whose problem is one of shape. The chart test runs the real Helm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML
from support.helm import Helm

from spookd.config import hostdevices, load_config, selectors, validate
from spookd.config.schema import SchemaError, chart_values_schema, config_schema, render

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CONFIG_SCHEMA = ROOT / "docs" / "config.schema.json"
CHART = ROOT / "helm" / "spookd"
VALUES_SCHEMA = CHART / "values.schema.json"
REGENERATE = "run `nox -s schema` (python tools/generate_schema.py) and commit the result"

#: Bad configurations the schema rejects: a wrong type, a missing, unknown or empty
#: key or list, or a value whose form the schema states (IDs, names, durations).
REJECTED_BY_SCHEMA = {
    "device_mapping_null.yaml",
    "device_mapping_scalar.yaml",
    "device_node_bad_permissions.yaml",
    "device_not_mapping.yaml",
    "devices_missing.yaml",
    "devices_not_list.yaml",
    "devices_null.yaml",
    "empty.yaml",
    "comment_only.yaml",
    "env_bad_key.yaml",
    "env_bool_value.yaml",
    "env_float_value.yaml",
    "env_list_value.yaml",
    "env_map_value.yaml",
    "env_not_mapping.yaml",
    "env_null_value.yaml",
    "exclusive_not_bool.yaml",
    "health_bad_duration.yaml",
    "host_not_string.yaml",
    "hosts_empty.yaml",
    "hosts_missing.yaml",
    "hosts_not_list.yaml",
    "instance_id_bad_chars.yaml",
    "instance_id_bool.yaml",
    "instance_id_empty.yaml",
    "instance_id_float.yaml",
    "instance_id_missing.yaml",
    "instance_id_too_long.yaml",
    "instance_id_unquoted.yaml",
    "mapping_not_mapping.yaml",
    "missing_device_mapping.yaml",
    "mount_missing_container_path.yaml",
    "mount_read_only_string.yaml",
    "non_string_key.yaml",
    "not_a_mapping.yaml",
    "resource_name_missing.yaml",
    "resource_no_domain.yaml",
    "resource_not_string.yaml",
    "resource_two_slashes.yaml",
    "resource_uppercase_domain.yaml",
    "scalar_document.yaml",
    "unknown_device_key.yaml",
    "unknown_mapping_key.yaml",
    "unknown_top_key.yaml",
}
#: Bad configurations whose data has the right shape: only Spookd's own checks see
#: the problem (rules across devices, reserved names, name rules, paths, values).
LEFT_TO_SPOOKD = {
    "annotation_bad_name.yaml",
    "cdi_bad_name.yaml",
    "conflicting_env.yaml",
    "device_node_relative.yaml",
    "env_date_value.yaml",
    "env_nul_value.yaml",
    "env_prefix_collision.yaml",
    "env_reserved_dev_prefix.yaml",
    "env_reserved_id.yaml",
    "env_reserved_num_devices.yaml",
    "env_reserved_type.yaml",
    "health_bad_tcp.yaml",
    "health_bad_threshold.yaml",
    "health_tcp_and_path.yaml",
    "host_invalid.yaml",
    "resource_kubernetes_io.yaml",
    "resource_name_too_long.yaml",
    "resource_requests_prefix.yaml",
    "resource_sub_kubernetes_io.yaml",
    "variable_collision.yaml",
}
#: Not one YAML document of data: there is nothing for a schema to look at.
NOT_DATA = {
    "binary_garbage.bin",
    "duplicate_key.yaml",
    "env_duplicate_key.yaml",
    "invalid_utf8.yaml",
    "multi_document.yaml",
    "tab_indent.yaml",
    "unclosed_bracket.yaml",
}


def _data(path: Path) -> Any:
    """The file as JSON data, which is what a schema sees: keys become strings, and so
    do dates (YAML 1.2 editors have no dates; Helm turns them into RFC 3339 text)."""
    data = YAML(typ="safe", pure=True).load(path.read_bytes())
    return json.loads(json.dumps(data, default=str))


def _validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def schema() -> jsonschema.Draft7Validator:
    return _validator(json.loads(CONFIG_SCHEMA.read_text()))


# -- the checked-in files are generated --------------------------------------------


def test_checked_in_schema_is_the_generated_one() -> None:
    assert CONFIG_SCHEMA.read_text() == render(config_schema()), REGENERATE


def test_chart_values_schema_types_device_mapping_with_the_generated_schema() -> None:
    text = VALUES_SCHEMA.read_text()
    assert text == render(chart_values_schema(json.loads(text))), REGENERATE
    chart = json.loads(text)
    generated = config_schema()["definitions"]
    assert {k for k in chart["definitions"] if k.startswith("config.")} == {f"config.{k}" for k in generated}
    assert chart["properties"]["deviceMapping"]["items"] == {"$ref": "#/definitions/config.DeviceMapping"}


def test_regenerating_the_chart_schema_replaces_the_old_definitions() -> None:
    chart = json.loads(VALUES_SCHEMA.read_text())
    chart["definitions"]["config.Gone"] = {"type": "object"}
    chart["definitions"]["config.Device"] = {"type": "string"}
    again = chart_values_schema(chart)
    assert "config.Gone" not in again["definitions"]
    assert again == json.loads(VALUES_SCHEMA.read_text())


def test_the_schema_names_exactly_the_keys_the_loader_accepts() -> None:
    generated = config_schema()
    objects = {"": generated, **generated["definitions"]}
    loader = {
        "": validate._TOP_KEYS,
        "DeviceMapping": validate._MAPPING_KEYS,
        "Device": validate._DEVICE_KEYS,
        "HealthCheck": hostdevices._HEALTH_KEYS,
        "DeviceNode": hostdevices._DEVICE_NODE_KEYS,
        "Mount": hostdevices._MOUNT_KEYS,
        "LabelSelector": selectors._SELECTOR_KEYS,
        "LabelRequirement": selectors._REQUIREMENT_KEYS,
    }
    assert objects.keys() == loader.keys(), "a model struct the test does not know: add its loader keys"
    for name, keys in loader.items():
        assert list(objects[name]["properties"]) == list(keys), name
        assert objects[name]["additionalProperties"] is False


def test_a_model_type_the_generator_cannot_spell_stops_it() -> None:
    import msgspec

    from spookd.config import schema as generator

    class Odd(msgspec.Struct):
        when: float

    with pytest.raises(SchemaError, match="cannot spell"):
        generator._object(msgspec.inspect.type_info(Odd), {})


# -- the corpus ------------------------------------------------------------------


def _good_files() -> list[Path]:
    return sorted((DATA / "good").glob("*.yaml"))


@pytest.mark.parametrize("path", _good_files(), ids=lambda p: p.name)
def test_every_good_configuration_validates(schema: jsonschema.Draft7Validator, path: Path) -> None:
    load_config(path.read_bytes(), path.name)  # Spookd accepts it...
    errors = [e.message for e in schema.iter_errors(_data(path))]
    assert not errors, errors  # ...and so does the schema


def test_every_bad_file_is_classified() -> None:
    names = {p.name for p in (DATA / "bad").iterdir()}
    classified = [REJECTED_BY_SCHEMA, LEFT_TO_SPOOKD, NOT_DATA]
    assert sum(len(c) for c in classified) == len(set().union(*classified)), "a file in two classes"
    assert names == set().union(*classified), "classify the new bad files here"


@pytest.mark.parametrize("name", sorted(REJECTED_BY_SCHEMA))
def test_schema_rejects_every_shape_error(schema: jsonschema.Draft7Validator, name: str) -> None:
    assert list(schema.iter_errors(_data(DATA / "bad" / name))), f"the schema accepts {name}"


@pytest.mark.parametrize("name", sorted(LEFT_TO_SPOOKD))
def test_the_rest_is_left_to_spookd(schema: jsonschema.Draft7Validator, name: str) -> None:
    errors = [e.message for e in schema.iter_errors(_data(DATA / "bad" / name))]
    assert not errors, f"{name} is rejected by the schema: move it to REJECTED_BY_SCHEMA ({errors})"


@pytest.mark.parametrize("name", sorted(NOT_DATA))
def test_files_that_are_no_data_do_not_load(name: str) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - any YAML or decoding error
        _data(DATA / "bad" / name)


def test_the_documented_editor_line_points_at_the_schema() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert "# yaml-language-server: $schema=" in reference
    assert "config.schema.json" in reference


# -- the chart, with the real Helm -------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.build(CHART)


WRONGLY_TYPED = {
    "hosts-a-string": ('[{"hosts": "n1", "devices": []}]', "/deviceMapping/0/hosts"),
    "env-a-list": (
        '[{"hosts": ["n1"], "devices": [{"resourceName": "a.io/x", "instanceID": "1", "env": ["A"]}]}]',
        "/deviceMapping/0/devices/0/env",
    ),
    "health-interval-a-bool": (
        '[{"hosts": ["n1"], "devices": [{"resourceName": "a.io/x", "instanceID": "1",'
        ' "healthCheck": {"path": "/dev/kvm", "interval": true}}]}]',
        "/deviceMapping/0/devices/0/healthCheck/interval",
    ),
    "mount-unknown-key": (
        '[{"hosts": ["n1"], "devices": [{"resourceName": "a.io/x", "instanceID": "1",'
        ' "mounts": [{"hostPath": "/a", "containerPath": "/b", "readonly": true}]}]}]',
        "additional properties 'readonly' not allowed",
    ),
}


@pytest.mark.parametrize("case", WRONGLY_TYPED)
@pytest.mark.parametrize("command", ["lint", "template"])
def test_helm_rejects_a_wrongly_typed_mapping(helm: Helm, command: str, case: str) -> None:
    mapping, complaint = WRONGLY_TYPED[case]
    if command == "lint":
        args = ["lint", str(CHART), "--strict", "--set-json", f"deviceMapping={mapping}"]
    else:
        args = helm.template_args("spookd", "kube-system", set_json={"deviceMapping": mapping})
    proc = helm.run(*args, check=False)
    assert proc.returncode != 0, f"helm {command} accepted {case}"
    assert complaint in proc.stdout + proc.stderr


def test_helm_accepts_every_good_configuration(helm: Helm, tmp_path: Path) -> None:
    for path in _good_files():
        values = tmp_path / path.name
        values.write_text(json.dumps({"deviceMapping": _data(path)["deviceMapping"]}))
        helm.lint([values])
