"""The command line as a user runs it: subprocesses, exit codes, messages (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GOOD = DATA / "good"


def spookd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spookd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_validate_accepts_both_examples() -> None:
    result = spookd("validate", str(GOOD / "lab.yaml"), str(GOOD / "walkthrough.yaml"))
    assert result.returncode == 0, result.stderr
    assert "lab.yaml: OK (2 mappings, 3 devices, 3 nodes)" in result.stdout


def test_validate_reports_every_error_as_file_line_col_and_exits_2() -> None:
    bad = DATA / "bad" / "instance_id_unquoted.yaml"
    result = spookd("validate", str(GOOD / "lab.yaml"), str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{bad}:5:21: deviceMapping[0].devices[0].instanceID: instanceID is an unquoted number "
        '(0001 would lose its exact spelling); quote it: instanceID: "0001"'
    )


def test_validate_missing_file_is_an_error_not_a_traceback() -> None:
    result = spookd("validate", "/nonexistent/config.yaml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot read /nonexistent/config.yaml" in result.stderr


def spookd_stdin(text: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "spookd", *args], input=text, capture_output=True, timeout=60, check=False
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_validate_dash_reads_standard_input() -> None:
    good = spookd_stdin((GOOD / "lab.yaml").read_bytes(), "validate", "-")
    assert good.returncode == 0, good.stderr
    assert good.stdout == "<stdin>: OK (2 mappings, 3 devices, 3 nodes)\n"
    bad = spookd_stdin((DATA / "bad" / "instance_id_unquoted.yaml").read_bytes(), "validate", "-")
    assert bad.returncode == 2
    assert bad.stderr.startswith("<stdin>:5:21: deviceMapping[0].devices[0].instanceID: ")
    empty = spookd_stdin(b"", "validate", "-")
    assert empty.returncode == 2
    assert empty.stderr.startswith("<stdin>:1:1: the configuration is empty")


def test_validate_output_json_lists_every_error_with_its_place() -> None:
    bad = DATA / "bad" / "conflicting_env.yaml"
    result = spookd_stdin(
        (GOOD / "lab.yaml").read_bytes(),
        "validate", "--output", "json", "-", str(bad), "/nonexistent/config.yaml",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["valid"] is False
    assert out["sources"] == [
        {"source": "<stdin>", "valid": True, "mappings": 2, "devices": 3, "nodes": 3},
        {"source": str(bad), "valid": False},
        {"source": "/nonexistent/config.yaml", "valid": False},
    ]
    (conflict, missing) = out["errors"]
    assert set(conflict) == {"source", "line", "column", "path", "message"}
    assert (conflict["source"], conflict["line"], conflict["column"]) == (str(bad), 7, 9)
    assert conflict["path"] == "deviceMapping[1].devices[0]"
    assert "every occurrence of a device must be identical" in conflict["message"]
    assert missing == {
        "source": "/nonexistent/config.yaml",
        "line": 1,
        "column": 1,
        "path": "",
        "message": "cannot read /nonexistent/config.yaml: No such file or directory",
    }


def test_validate_output_json_of_valid_files_exits_0() -> None:
    result = spookd("validate", "--output", "json", str(GOOD / "walkthrough.yaml"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {
        "valid": True,
        "sources": [
            {"source": str(GOOD / "walkthrough.yaml"), "valid": True, "mappings": 1, "devices": 2, "nodes": 1}
        ],
        "errors": [],
    }


def test_render_shows_resources_and_the_allocation_environment() -> None:
    result = spookd("render", str(GOOD / "walkthrough.yaml"), "--node", "minikube", "--output", "json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["resources"] == {
        "example.com/thingamajig": ["A1234"],
        "example.com/widget": ["0001"],
    }
    assert out["env"]["EXAMPLECOM_WIDGET_IP"] == "192.168.0.200"
    assert out["env"]["EXAMPLECOM_THINGAMAJIG_NUM_DEVICES"] == "1"
    text = spookd(
        "render",
        str(GOOD / "lab.yaml"),
        "--node",
        "lab2-host1",
        "--allocate",
        "skao.int/oscilloscope=0003",
    )
    assert "skao.int/oscilloscope: 1  (0003)" in text.stdout
    assert "SKAOINT_OSCILLOSCOPE_IP=10.0.10.85" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "give exactly one of --config FILE or --configmap NAMESPACE/NAME"),
        (["run", "--config", "a", "--configmap", "ns/b"], "give exactly one of"),
        (["run", "--configmap", "nonamespace"], "must look like NAMESPACE/NAME"),
        (["run", "--config", "x", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["run", "--config", "x", "--http-addr", "nowhere"], "must look like HOST:PORT"),
        (["run", "--config", "x", "--plugin-dir", "/" + "p" * 120], "shorter --plugin-dir"),
        (["render", "x.yaml"], "the following arguments are required: --node"),
        (["validate"], "give at least one FILE, - (standard input) or --configmap"),
        (["validate", "-", "-"], "- (standard input) can be given only once"),
        (["validate", "--configmap", "lab"], "--configmap 'lab' must look like NAMESPACE/NAME"),
        (["validate", "--configmap", "a/b/c"], "must look like NAMESPACE/NAME"),
        (["validate", "x.yaml", "--output", "yaml"], "invalid choice: 'yaml'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "missing command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = spookd(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("spookd: error: ")


def test_flags_read_spookd_environment_variables() -> None:
    result = spookd("run", "--config", "x", env={"SPOOKD_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert "invalid choice: 'loud'" in result.stderr


def test_version() -> None:
    result = spookd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("spookd ")


def test_run_serves_a_config_file_and_sigterm_removes_sockets(plugin_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((GOOD / "walkthrough.yaml").read_text())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spookd",
            "run",
            "--config",
            str(config),
            "--node-name",
            "minikube",
            "--plugin-dir",
            str(plugin_dir),
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        expected = {"spookd-examplecom_widget.sock", "spookd-examplecom_thingamajig.sock"}
        while {p.name for p in plugin_dir.iterdir()} != expected:
            assert time.monotonic() < deadline, "sockets never appeared"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert took < 5
    assert list(plugin_dir.iterdir()) == []
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert "starting" in messages
    assert next(r for r in records if r["message"] == "starting")["node"] == "minikube"
    assert "server started" in messages
    assert "shutting down" in messages
    assert all("Traceback" not in line for line in stderr.splitlines())


def test_a_tuning_variable_that_is_no_positive_number_is_a_usage_error() -> None:
    result = spookd("run", "--config", "x", env={"SPOOKD_LEASE_DURATION": "soon"})
    assert result.returncode == 2
    assert result.stderr.strip() == "spookd: error: SPOOKD_LEASE_DURATION='soon' must be a positive number"
    result = spookd("run", "--config", "x", env={"SPOOKD_WATCH_TIMEOUT": "1.5"})
    assert result.returncode == 2
    assert "SPOOKD_WATCH_TIMEOUT='1.5' must be a positive whole number" in result.stderr
