"""Socket names and environment prefixes (SPEC §5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spookd.naming import (
    MAX_SOCKET_PATH_BYTES,
    SocketPathError,
    assign_socket_names,
    env_prefix,
    generation_socket_name,
    plain_socket_name,
)

DIR = "/var/lib/kubelet/device-plugins"

label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
short = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,40}[A-Za-z0-9])?", fullmatch=True)
resource = st.builds(lambda d, n: f"{d}/{n}", domain, short)


def test_socket_name_follows_the_spec() -> None:
    assert plain_socket_name("example.com/widget") == "spookd-examplecom_widget.sock"
    assert assign_socket_names(["example.com/widget"], DIR) == {
        "example.com/widget": "spookd-examplecom_widget.sock"
    }


def test_colliding_names_get_a_stable_hash_suffix() -> None:
    names = assign_socket_names(["ab.c/x", "a.bc/x"], DIR)
    assert len(set(names.values())) == 2
    assert all(n.startswith("spookd-abc_x") and n.endswith(".sock") for n in names.values())
    assert names == assign_socket_names(["a.bc/x", "ab.c/x"], DIR)


def test_running_resource_keeps_its_socket_when_a_colliding_one_arrives() -> None:
    first = assign_socket_names(["ab.c/x"], DIR)
    assert first["ab.c/x"] == "spookd-abc_x.sock"
    both = assign_socket_names(["ab.c/x", "a.bc/x"], DIR, existing=first)
    assert both["ab.c/x"] == "spookd-abc_x.sock"
    assert both["a.bc/x"] != "spookd-abc_x.sock"


def test_long_names_are_shortened_to_fit_the_socket_path_limit() -> None:
    long_dir = "/tmp/" + "d" * 40
    name = "very-long-domain-name.example.com/" + "w" * 63
    assigned = assign_socket_names([name], long_dir)[name]
    assert len(f"{long_dir}/{assigned}".encode()) <= MAX_SOCKET_PATH_BYTES
    assert assigned.startswith("spookd-")
    assert assigned.endswith(".sock")


def test_a_plugin_dir_too_long_for_any_socket_is_an_error() -> None:
    with pytest.raises(SocketPathError, match="shorter --plugin-dir"):
        assign_socket_names(["example.com/w"], "/" + "x" * 100)


def test_env_prefix_follows_the_spec() -> None:
    assert env_prefix("example.com/widget") == "EXAMPLECOM_WIDGET"
    assert env_prefix("skao.int/signal-generator") == "SKAOINT_SIGNAL_GENERATOR"


@given(st.lists(resource, min_size=1, max_size=30, unique=True), st.sampled_from([DIR, "/tmp/p"]))
def test_distinct_resources_never_share_a_socket(resources: list[str], plugin_dir: str) -> None:
    names = assign_socket_names(resources, plugin_dir)
    assert sorted(names) == sorted(resources)
    assert len(set(names.values())) == len(resources)
    for name in names.values():
        assert len(f"{plugin_dir}/{name}".encode()) <= MAX_SOCKET_PATH_BYTES
        assert "/" not in name


@given(
    st.lists(resource, min_size=1, max_size=10, unique=True),
    st.lists(resource, min_size=1, max_size=10, unique=True),
)
def test_existing_sockets_are_kept_and_new_ones_do_not_collide(before: list[str], after: list[str]) -> None:
    first = assign_socket_names(before, DIR)
    second = assign_socket_names(before + after, DIR, existing=first)
    assert all(second[r] == first[r] for r in before)
    assert len(set(second.values())) == len(second)


def test_a_moved_socket_gets_a_generation_no_other_resource_can_have() -> None:
    assert (
        generation_socket_name("spookd-examplecom_widget.sock", 2, DIR) == "spookd-examplecom_widget.g2.sock"
    )
    assert (
        generation_socket_name("spookd-examplecom_widget.g2.sock", 3, DIR)
        == "spookd-examplecom_widget.g3.sock"
    )
    long_dir = "/tmp/" + "d" * 60
    moved = generation_socket_name("spookd-" + "w" * 40 + ".sock", 12, long_dir)
    assert len(f"{long_dir}/{moved}".encode()) <= MAX_SOCKET_PATH_BYTES
    assert moved.endswith(".g12.sock")


def test_reserved_env_keys_are_the_generated_suffixes() -> None:
    from spookd.naming import is_reserved_env_key

    assert [
        k
        for k in ("ID", "TYPE", "NUM_DEVICES", "DEV0_IP", "DEV12_X", "IP", "DEVICE", "DEV_X", "id")
        if is_reserved_env_key(k)
    ] == [
        "ID",
        "TYPE",
        "NUM_DEVICES",
        "DEV0_IP",
        "DEV12_X",
    ]


@settings(deadline=None)
@given(
    st.integers(min_value=1, max_value=5),
    st.sets(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True), max_size=3),
)
def test_allocate_sets_exactly_the_names_the_scheme_lists(count: int, keys: set[str]) -> None:
    from spookd.allocation import container_env
    from spookd.config import Device
    from spookd.naming import env_suffixes, is_reserved_env_key

    keys = {k for k in keys if not is_reserved_env_key(k)}
    devices = [Device("e.com/w", f"d{i}", tuple((k, "v") for k in sorted(keys))) for i in range(count)]
    names = {name.removeprefix("ECOM_W_") for name in container_env("e.com/w", devices)}
    assert names == set(env_suffixes(count, keys))
