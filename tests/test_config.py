"""Configuration loading and validation (SPEC §1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spookd.config import ConfigInvalid, Device, load_config

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"

# file name -> (line, column, YAML path, message fragment)
BAD_CASES: dict[str, tuple[int, int, str, str]] = {
    "exclusive_not_bool.yaml": (1, 12, "exclusive", "exclusive must be true or false, got a string"),
    "health_tcp_and_path.yaml": (
        6,
        22,
        "deviceMapping[0].devices[0].healthCheck",
        "exactly one of `tcp: host:port` or `path",
    ),
    "health_bad_tcp.yaml": (6, 28, "deviceMapping[0].devices[0].healthCheck.tcp", "must be host:port"),
    "health_bad_duration.yaml": (
        6,
        56,
        "deviceMapping[0].devices[0].healthCheck.interval",
        "is not a duration",
    ),
    "health_bad_threshold.yaml": (
        6,
        57,
        "deviceMapping[0].devices[0].healthCheck.failureThreshold",
        "from 1 to 1000",
    ),
    "device_node_relative.yaml": (
        6,
        34,
        "deviceMapping[0].devices[0].deviceNodes[0].hostPath",
        "must be an absolute path",
    ),
    "device_node_bad_permissions.yaml": (
        6,
        57,
        "deviceMapping[0].devices[0].deviceNodes[0].permissions",
        "some of r, w and m",
    ),
    "mount_missing_container_path.yaml": (
        6,
        18,
        "deviceMapping[0].devices[0].mounts[0]",
        "missing key `containerPath`",
    ),
    "mount_read_only_string.yaml": (
        6,
        74,
        "deviceMapping[0].devices[0].mounts[0].readOnly",
        "must be true or false",
    ),
    "annotation_bad_name.yaml": (
        6,
        23,
        "deviceMapping[0].devices[0].annotations.bad name!",
        "must be a qualified name",
    ),
    "cdi_bad_name.yaml": (6, 22, "deviceMapping[0].devices[0].cdiDevices[0]", "is not a CDI device name"),
    "binary_garbage.bin": (2, 4, "", "not valid UTF-8"),
    "comment_only.yaml": (1, 1, "", "configuration is empty"),
    "conflicting_env.yaml": (
        7,
        9,
        "deviceMapping[1].devices[0]",
        "also defined at deviceMapping[0].devices[0] (line 4) with a different env or settings",
    ),
    "device_mapping_null.yaml": (1, 15, "deviceMapping", "write `deviceMapping: []`"),
    "device_mapping_scalar.yaml": (
        1,
        16,
        "deviceMapping",
        "expected a list of mappings, got a string",
    ),
    "device_not_mapping.yaml": (4, 9, "deviceMapping[0].devices[0]", "expected a device mapping"),
    "devices_missing.yaml": (2, 5, "deviceMapping[0]", "missing key `devices`"),
    "devices_not_list.yaml": (
        3,
        14,
        "deviceMapping[0].devices",
        "expected a list of devices, got a mapping",
    ),
    "devices_null.yaml": (3, 13, "deviceMapping[0].devices", "write `devices: []` for none"),
    "duplicate_key.yaml": (3, 5, "deviceMapping[0].hosts", "duplicate key `hosts`"),
    "empty.yaml": (1, 1, "", "configuration is empty"),
    "env_bad_key.yaml": (
        6,
        15,
        "deviceMapping[0].devices[0].env.my-ip",
        "must match [A-Za-z_][A-Za-z0-9_]*",
    ),
    "env_bool_value.yaml": (
        6,
        24,
        "deviceMapping[0].devices[0].env.ENABLED",
        'is a boolean; quote it if you mean the text: "true"',
    ),
    "env_date_value.yaml": (6, 22, "deviceMapping[0].devices[0].env.SINCE", "is a date; quote it"),
    "env_duplicate_key.yaml": (
        6,
        22,
        "deviceMapping[0].devices[0].env.IP",
        "duplicate env name `IP`",
    ),
    "env_float_value.yaml": (
        6,
        21,
        "deviceMapping[0].devices[0].env.RATE",
        "floating-point number; quote it",
    ),
    "env_list_value.yaml": (6, 20, "deviceMapping[0].devices[0].env.IPS", "got a list"),
    "env_map_value.yaml": (6, 21, "deviceMapping[0].devices[0].env.ADDR", "got a mapping"),
    "env_not_mapping.yaml": (6, 14, "deviceMapping[0].devices[0].env", "env must be a mapping"),
    "env_nul_value.yaml": (6, 19, "deviceMapping[0].devices[0].env.IP", "NUL character"),
    "env_null_value.yaml": (6, 19, "deviceMapping[0].devices[0].env.IP", "is null; quote it"),
    "env_prefix_collision.yaml": (
        5,
        24,
        "deviceMapping[0].devices[1].resourceName",
        "would both set EXAMPLECOM_A_B_ID",
    ),
    "env_reserved_dev_prefix.yaml": (
        6,
        15,
        "deviceMapping[0].devices[0].env.DEV0_IP",
        "is reserved",
    ),
    "env_reserved_id.yaml": (6, 15, "deviceMapping[0].devices[0].env.ID", "is reserved"),
    "env_reserved_num_devices.yaml": (
        6,
        15,
        "deviceMapping[0].devices[0].env.NUM_DEVICES",
        "is reserved",
    ),
    "env_reserved_type.yaml": (6, 15, "deviceMapping[0].devices[0].env.TYPE", "is reserved"),
    "host_invalid.yaml": (2, 13, "deviceMapping[0].hosts[0]", "not a valid node name"),
    "host_not_string.yaml": (
        2,
        21,
        "deviceMapping[0].hosts[1]",
        "must be a string, got a number; quote it",
    ),
    "hosts_empty.yaml": (2, 12, "deviceMapping[0].hosts", "empty list"),
    "hosts_missing.yaml": (2, 5, "deviceMapping[0]", "missing key `hosts`"),
    "hosts_not_list.yaml": (2, 12, "deviceMapping[0].hosts", "expected a list of node names"),
    "instance_id_bad_chars.yaml": (5, 21, "deviceMapping[0].devices[0].instanceID", "contains '/'"),
    "instance_id_bool.yaml": (
        5,
        21,
        "deviceMapping[0].devices[0].instanceID",
        'got a boolean; quote it: "true"',
    ),
    "instance_id_empty.yaml": (
        5,
        21,
        "deviceMapping[0].devices[0].instanceID",
        "instanceID is empty",
    ),
    "instance_id_float.yaml": (5, 21, "deviceMapping[0].devices[0].instanceID", "unquoted number"),
    "instance_id_missing.yaml": (4, 9, "deviceMapping[0].devices[0]", "missing key `instanceID`"),
    "instance_id_too_long.yaml": (5, 21, "deviceMapping[0].devices[0].instanceID", "at most 63"),
    "instance_id_unquoted.yaml": (
        5,
        21,
        "deviceMapping[0].devices[0].instanceID",
        'quote it: instanceID: "0001"',
    ),
    "invalid_utf8.yaml": (2, 6, "", "not valid UTF-8"),
    "mapping_not_mapping.yaml": (
        2,
        5,
        "deviceMapping[0]",
        "expected a mapping with `hosts` and `devices`",
    ),
    "missing_device_mapping.yaml": (1, 1, "", "missing key `deviceMapping`"),
    "multi_document.yaml": (2, 1, "", "more than one YAML document"),
    "non_string_key.yaml": (
        6,
        15,
        "deviceMapping[0].devices[0].env.1",
        "env names must be strings",
    ),
    "not_a_mapping.yaml": (1, 1, "", "must be a mapping with the key `deviceMapping`, got a list"),
    "resource_kubernetes_io.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "kubernetes.io namespace is reserved",
    ),
    "resource_name_missing.yaml": (
        4,
        9,
        "deviceMapping[0].devices[0]",
        "missing key `resourceName`",
    ),
    "resource_name_too_long.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "must be 1-63 characters",
    ),
    "resource_no_domain.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "needs a domain",
    ),
    "resource_not_string.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "must be a string, got a list",
    ),
    "resource_requests_prefix.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "`requests.` are reserved",
    ),
    "resource_sub_kubernetes_io.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "kubernetes.io namespace is reserved",
    ),
    "resource_two_slashes.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "only one `/`",
    ),
    "resource_uppercase_domain.yaml": (
        4,
        23,
        "deviceMapping[0].devices[0].resourceName",
        "lower-case DNS subdomain",
    ),
    "scalar_document.yaml": (1, 1, "", "got a string"),
    "tab_indent.yaml": (2, 1, "", "invalid YAML"),
    "unclosed_bracket.yaml": (3, 1, "", "invalid YAML"),
    "unknown_device_key.yaml": (
        5,
        9,
        "deviceMapping[0].devices[0].instanceId",
        "did you mean `instanceID`?",
    ),
    "unknown_mapping_key.yaml": (2, 5, "deviceMapping[0].host", "did you mean `hosts`?"),
    "unknown_top_key.yaml": (1, 1, "deviceMaping", "did you mean `deviceMapping`?"),
    "variable_collision.yaml": (
        5,
        24,
        "deviceMapping[0].devices[1].resourceName",
        "would both set EXAMPLECOM_X_FOO_ID",
    ),
}


def _errors(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        load_config(path.read_bytes(), path.name)
    return [str(e) for e in info.value.errors]


def test_every_bad_file_has_an_expectation() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_CASES)
    assert len(BAD_CASES) >= 40


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_configuration_is_rejected_with_its_place(name: str) -> None:
    line, column, path, fragment = BAD_CASES[name]
    with pytest.raises(ConfigInvalid) as info:
        load_config((BAD / name).read_bytes(), name)
    errors = info.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    error = errors[0]
    assert (error.source, error.line, error.column, error.path) == (name, line, column, path)
    assert fragment in error.message
    assert str(error).startswith(f"{name}:{line}:{column}: ")


def test_lab_example_is_accepted() -> None:
    config = load_config((DATA / "good" / "lab.yaml").read_text(), "lab.yaml")
    host1 = config.for_node("lab1-host1")
    assert host1 == config.for_node("LAB1-Host2")
    assert sorted(host1) == ["skao.int/oscilloscope", "skao.int/signal-generator"]
    assert host1["skao.int/oscilloscope"]["0001"] == Device(
        "skao.int/oscilloscope", "0001", (("IP", "10.0.10.215"), ("PORT", "5025"))
    )
    assert list(config.for_node("lab2-host1")["skao.int/oscilloscope"]) == ["0003"]
    assert config.for_node("elsewhere") == {}


def test_walkthrough_example_is_accepted() -> None:
    config = load_config((DATA / "good" / "walkthrough.yaml").read_text(), "walkthrough.yaml")
    node = config.for_node("minikube")
    assert {r: sorted(d) for r, d in node.items()} == {
        "example.com/widget": ["0001"],
        "example.com/thingamajig": ["A1234"],
    }


def test_empty_device_mapping_serves_nothing() -> None:
    assert load_config("deviceMapping: []\n", "x").for_node("any") == {}


def test_every_error_is_reported_at_once() -> None:
    text = (
        "deviceMapping:\n"
        "  - hosts: [a]\n"
        "    devices:\n"
        "      - {resourceName: widget, instanceID: 1}\n"
        '      - {resourceName: example.com/w, instanceID: "x", env: {ID: 1, OK: yes, B: true}}\n'
    )
    with pytest.raises(ConfigInvalid) as info:
        load_config(text, "many.yaml")
    places = [(e.line, e.column) for e in info.value.errors]
    assert places == [(4, 24), (4, 44), (5, 62), (5, 81)]


def test_same_device_twice_with_identical_env_is_one_device() -> None:
    text = (
        "deviceMapping:\n"
        '  - {hosts: [a], devices: [{resourceName: example.com/w, instanceID: "1", env: {IP: x}}]}\n'
        '  - {hosts: [a, b], devices: [{resourceName: example.com/w, instanceID: "1", env: {IP: x}}]}\n'
    )
    config = load_config(text, "dup.yaml")
    assert list(config.for_node("a")["example.com/w"]) == ["1"]
    assert list(config.for_node("b")["example.com/w"]) == ["1"]


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("5025", "5025"),
        ("0x1F", "31"),
        ("0o17", "15"),
        ("-3", "-3"),
        ("0b101", "5"),
        ("1_000", "1000"),
        ('"007"', "007"),
        ("yes", "yes"),
    ],
)
def test_env_values_render_integers_in_decimal(value: str, rendered: str) -> None:
    text = f'deviceMapping:\n  - {{hosts: [a], devices: [{{resourceName: e.com/w, instanceID: "1", env: {{V: {value}}}}}]}}\n'
    device = load_config(text, "v.yaml").for_node("a")["e.com/w"]["1"]
    assert dict(device.env) == {"V": rendered}


def test_large_file_error_is_found_at_its_line() -> None:
    lines = ["deviceMapping:"]
    i = size = 0
    while size < 2 * 1024 * 1024:
        block = [
            f"  - hosts: [node-{i}]",
            "    devices:",
            f'      - {{resourceName: example.com/r{i % 97}, instanceID: "{i:06d}", env: {{IP: 10.0.{i % 250}.{i % 200}}}}}',
        ]
        lines.extend(block)
        size += sum(len(x) + 1 for x in block)
        i += 1
    lines.append("  - hosts: [last]")
    lines.append("    devices:")
    lines.append("      - {resourceName: example.com/r1, instanceID: 7}")
    text = "\n".join(lines) + "\n"
    assert len(text) > 2 * 1024 * 1024
    with pytest.raises(ConfigInvalid) as info:
        load_config(text.encode(), "big.yaml")
    (error,) = info.value.errors
    assert (error.line, error.column) == (len(lines), 52)
    assert error.path == f"deviceMapping[{i}].devices[0].instanceID"


def test_host_devices_and_health_check_are_read() -> None:
    text = """\
deviceMapping:
  - hosts: [n]
    devices:
      - resourceName: example.com/kvm
        instanceID: kvm0
        healthCheck: {path: /dev/kvm, interval: 500ms, timeout: 2s, failureThreshold: 2}
        deviceNodes: [{hostPath: /dev/kvm}, {hostPath: /dev/vhost-net, containerPath: /dev/net, permissions: rwm}]
        mounts: [{hostPath: /opt/tools, containerPath: /tools, readOnly: true}]
        annotations: {example.com/model: x1}
        cdiDevices: [vendor.com/class=kvm0]
"""
    from spookd.config import DeviceNode, HealthCheck, Mount

    device = load_config(text, "t").for_node("n")["example.com/kvm"]["kvm0"]
    assert device.health_check == HealthCheck(path="/dev/kvm", interval=0.5, timeout=2.0, failure_threshold=2)
    assert device.device_nodes == (
        DeviceNode("/dev/kvm", "/dev/kvm", "rw"),
        DeviceNode("/dev/vhost-net", "/dev/net", "rwm"),
    )
    assert device.mounts == (Mount("/opt/tools", "/tools", read_only=True),)
    assert device.annotations == (("example.com/model", "x1"),)
    assert device.cdi_devices == ("vendor.com/class=kvm0",)


def test_exclusive_devices_are_the_ones_listed_for_several_hosts() -> None:
    text = (DATA / "good" / "lab.yaml").read_text()
    assert load_config(text, "lab.yaml").shared_devices() == frozenset()
    shared = load_config("exclusive: true\n" + text, "lab.yaml").shared_devices()
    assert shared == {("skao.int/oscilloscope", "0001"), ("skao.int/signal-generator", "0001")}
