"""The file source (SPEC §3): edits, atomic swaps, ConfigMap-volume symlinks, deletion."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from spookd.config.versions import Accepted, Deleted, Rejected, SourceEvent
from spookd.dirwatch import directory_changes
from spookd.sources.file import watch_file

pytestmark = pytest.mark.anyio

GOOD = 'deviceMapping:\n  - {hosts: [n], devices: [{resourceName: e.com/w, instanceID: "%s"}]}\n'


@pytest.fixture
def config_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="spk-cfg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ids(event: SourceEvent) -> list[str]:
    assert isinstance(event, Accepted), event
    return sorted(event.config.for_node("n").get("e.com/w", {}))


async def next_event(events: AsyncIterator[SourceEvent], timeout: float = 5.0) -> SourceEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


async def test_initial_version_then_every_edit(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.write_text(GOOD % "1")
    events = watch_file(path)
    assert ids(await next_event(events)) == ["1"]
    path.write_text(GOOD % "2")
    assert ids(await next_event(events)) == ["2"]
    tmp = config_dir / ".config.yaml.swp"
    tmp.write_text(GOOD % "3")
    tmp.replace(path)
    assert ids(await next_event(events)) == ["3"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_invalid_edit_is_rejected_and_the_fix_accepted(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.write_text(GOOD % "1")
    events = watch_file(path)
    await next_event(events)
    path.write_text("deviceMapping: [\n")
    rejected = await next_event(events)
    assert isinstance(rejected, Rejected)
    assert rejected.errors[0].source == str(path)
    path.write_text(GOOD % "2")
    assert ids(await next_event(events)) == ["2"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_configmap_volume_symlink_swap_is_seen(config_dir: Path) -> None:
    # The layout the kubelet writes for a ConfigMap volume:
    # config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/
    first = config_dir / "..2026_11_24_00_00_00.000000001"
    first.mkdir()
    (first / "config.yaml").write_text(GOOD % "1")
    (config_dir / "..data").symlink_to(first.name)
    (config_dir / "config.yaml").symlink_to("..data/config.yaml")
    events = watch_file(config_dir / "config.yaml")
    assert ids(await next_event(events)) == ["1"]
    second = config_dir / "..2026_11_24_00_01_00.000000002"
    second.mkdir()
    (second / "config.yaml").write_text(GOOD % "2")
    (config_dir / "..data_tmp").symlink_to(second.name)
    os.replace(config_dir / "..data_tmp", config_dir / "..data")
    shutil.rmtree(first)
    assert ids(await next_event(events)) == ["2"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_deleted_file_means_no_devices_and_recreation_restores(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.write_text(GOOD % "1")
    events = watch_file(path)
    await next_event(events)
    path.unlink()
    assert isinstance(await next_event(events), Deleted)
    path.write_text(GOOD % "4")
    assert ids(await next_event(events)) == ["4"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_missing_file_at_start_is_picked_up_when_created(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    events = watch_file(path)
    assert isinstance(await next_event(events), Deleted)
    path.write_text(GOOD % "5")
    assert ids(await next_event(events)) == ["5"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_burst_of_writes_yields_the_final_version(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.write_text(GOOD % "1")
    events = watch_file(path)
    await next_event(events)
    for i in range(2, 30):
        path.write_text(GOOD % i)
    seen = ids(await next_event(events))
    while seen != ["29"]:
        seen = ids(await next_event(events))
    await events.aclose()  # type: ignore[attr-defined]


async def test_unreadable_path_is_rejected_with_a_reason(config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.mkdir()  # not a file: reading fails even for root
    events = watch_file(path)
    rejected = await next_event(events)
    assert isinstance(rejected, Rejected)
    assert "cannot read the file: Is a directory" in rejected.errors[0].message
    path.rmdir()
    path.write_text(GOOD % "6")
    assert ids(await next_event(events)) == ["6"]
    await events.aclose()  # type: ignore[attr-defined]


def _create(directory: str, name: str) -> None:
    """A file made through os.path: the test's own pathlib paths would be interned too."""
    with open(os.path.join(directory, name), "w") as handle:
        handle.write("x")


async def test_the_names_of_files_that_come_and_go_are_not_interned(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory: a watched directory's events are not built into paths, whose parts
    Python 3.11's pathlib interns. The names are mostly used once (the kubelet's
    ``.<random>`` checkpoint files), and each churned the interpreter's interned-string
    table, whose ~1 MiB rebuild every few thousand reloads the heap kept."""
    seen: list[str] = []
    real = sys.intern

    def recording(value: str) -> str:
        seen.append(value)
        return real(value)

    changes = directory_changes(config_dir, safety_poll=5.0, debounce=0.01)
    with anyio.fail_after(5):
        assert await anext(changes) is True  # the watch stands
        monkeypatch.setattr(sys, "intern", recording)
        for n in range(5):
            _create(str(config_dir), f".once{n}")
        assert await anext(changes) is True
    monkeypatch.undo()
    await changes.aclose()  # type: ignore[attr-defined]
    assert [name for name in seen if name.startswith(".once")] == []
