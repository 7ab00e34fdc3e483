"""Parsing a configuration off the event loop (SPEC §3, §9), and the pure core's imports."""

from __future__ import annotations

import ast
import gc
import sys
import threading
from pathlib import Path

import anyio
import pytest

from spookd.config import ConfigInvalid
from spookd.config.versions import Accepted, Rejected
from spookd.sources.parsing import load_off_loop, parse

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def test_the_garbage_collector_is_back_after_every_parse_even_concurrent_ones() -> None:
    text = (DATA / "good" / "lab.yaml").read_bytes()
    before = gc.get_threshold()
    threads = [threading.Thread(target=load_off_loop, args=(text, "t")) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with pytest.raises(ConfigInvalid):
        load_off_loop(b"deviceMapping: 5\n", "bad")
    assert gc.get_threshold() == before
    assert gc.isenabled()


def test_no_full_collection_runs_during_a_parse_and_the_loop_gets_the_gil_back_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spookd.sources import parsing

    seen: list[tuple[tuple[int, int, int], float]] = []

    def spy(data: bytes, source: str) -> None:
        seen.append((gc.get_threshold(), sys.getswitchinterval()))

    monkeypatch.setattr(parsing, "load_config", spy)
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    load_off_loop(b"", "x")
    assert (gc.get_threshold(), sys.getswitchinterval()) == (before, interval)
    assert seen == [((before[0], before[1], parsing._NEVER), parsing.PARSE_SWITCH_INTERVAL)]
    assert gc.isenabled()


def test_a_parsed_configuration_leaves_little_for_the_collector() -> None:
    """The loop stall (issue #16): what a parse makes must not wait for one long pass after it."""
    from spookd.config import load_config

    lines = ["deviceMapping:", "  - hosts: [node-1]", "    devices:"]
    for i in range(6000):
        lines += [f"      - resourceName: example.com/r{i % 7}", f'        instanceID: "{i}"']
        lines += [f"        env: {{IP: 10.0.{i // 256}.{i % 256}, PORT: {8000 + i}}}"]
    text = ("\n".join(lines) + "\n").encode()
    gc.collect()
    config = load_off_loop(text, "t")
    devices = config.mappings[0].devices
    assert len(devices) == 6000
    assert not any(gc.is_tracked(device) for device in devices)
    # The young and middle passes ran during the parse and untracked the env tuples, all
    # but those of its last ten or so young passes; a collector held off leaves them all.
    still = sum(gc.is_tracked(device.env) for device in devices)
    assert still < 3000, still
    assert len(gc.get_objects(generation=0)) < 1000
    assert load_config(text, "t") == config


def test_parse_turns_bytes_into_an_accepted_or_rejected_version() -> None:
    async def main() -> tuple[object, object]:
        good = await parse((DATA / "good" / "lab.yaml").read_bytes(), "lab.yaml")
        bad = await parse(b"deviceMapping: 5\n", "bad.yaml")
        return good, bad

    good, bad = anyio.run(main)
    assert isinstance(good, Accepted)
    assert good.source == "lab.yaml"
    assert sorted(good.config.for_node("lab1-host1")) == [
        "skao.int/oscilloscope",
        "skao.int/signal-generator",
    ]
    assert isinstance(bad, Rejected)
    assert [str(e) for e in bad.errors] == [
        "bad.yaml:1:16: deviceMapping: expected a list of mappings, got a number"
    ]


PURE_CORE = [
    "spookd/config",
    "spookd/naming.py",
    "spookd/reconcile.py",
    "spookd/allocation.py",
    "spookd/health.py",
]
NOT_IN_THE_CORE = {"threading", "gc", "loguru", "asyncio", "anyio", "socket", "os", "subprocess", "pathlib"}


def test_the_pure_core_imports_no_threads_gc_switch_logging_or_io() -> None:
    found: dict[str, set[str]] = {}
    files = [
        p
        for entry in PURE_CORE
        for p in ([ROOT / entry] if entry.endswith(".py") else sorted((ROOT / entry).rglob("*.py")))
    ]
    assert len(files) >= 14
    assert ROOT / "spookd/naming.py" in files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad = {n.split(".")[0] for n in names} & NOT_IN_THE_CORE
            if bad:
                found.setdefault(str(path.relative_to(ROOT)), set()).update(bad)
    assert not found, found


#: What a file-source daemon imports before and while serving, in a fresh interpreter.
_DAEMON_IMPORTS = """
import sys
import spookd.runner, spookd.app, spookd.sources.file, spookd.deviceplugin.servers, spookd.deviceplugin.server
from spookd.config import load_config
config = load_config(open(sys.argv[1], "rb").read(), "lab.yaml")
print(sorted({m.split(".")[0] for m in sys.modules} & {"ruamel", "_ruamel_yaml", "email", "zipfile"}))
print("importlib.metadata" in sys.modules)
import betterproto2, importlib.metadata
print(betterproto2.__version__ == importlib.metadata.version("betterproto2"))
"""


def test_a_daemon_on_the_fast_path_never_loads_ruamel_yaml_or_importlib_metadata() -> None:
    """Memory (issue #16): the reference parser and importlib.metadata load only when needed,
    and betterproto2 still knows its own version."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DAEMON_IMPORTS, str(DATA / "good" / "lab.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "False", "True"]


def test_a_configuration_the_fast_path_leaves_loads_the_reference() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom spookd.config import ConfigInvalid, load_config\n"
            "try:\n    load_config(b'deviceMapping: 5\\n', 'bad.yaml')\nexcept ConfigInvalid as exc:\n"
            "    print(exc)\nprint('ruamel.yaml' in sys.modules)\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "bad.yaml:1:16: deviceMapping: expected a list of mappings, got a number",
        "True",
    ]


_ALLOCATOR_ORDER = """
import os, sys
import spookd.cli as cli
def seen(args):
    print(os.environ.get("MIMALLOC_ARENA_EAGER_COMMIT"), "yaml_rs" in sys.modules)
    return 0
cli.cmd_validate = seen
cli.main(["validate", "-"])
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "0 False"), ("1", "1 False")])
def test_the_allocator_default_is_set_before_yaml_rs_loads_and_yields_to_the_environment(
    given: str | None, expected: str
) -> None:
    """Memory (issue #16): yaml-rs's mimalloc reads its options when it loads, so the
    command line must set them first; an operator's own setting wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_ARENA_EAGER_COMMIT"}
    if given is not None:
        env["MIMALLOC_ARENA_EAGER_COMMIT"] = given
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_ORDER], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
