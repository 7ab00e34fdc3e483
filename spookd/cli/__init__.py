"""Command line (SPEC §6): ``spookd run | validate | render | publish``.

Every flag also reads a ``SPOOKD_*`` environment variable. Usage errors exit 2 with
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from spookd import __version__
from spookd.cli.checks import cmd_render, cmd_status, cmd_validate
from spookd.cli.common import EXIT_INVALID, EXIT_OK, UsageError

__all__ = ["EXIT_INVALID", "EXIT_OK", "UsageError", "build_parser", "main"]
from spookd.settings import (
    DEFAULT_CDI_DIR,
    DEFAULT_DRA_DRIVER,
    DEFAULT_KUBELET_DIR,
    DEFAULT_PLUGIN_DIR,
    DEFAULT_POD_RESOURCES_SOCKET,
    Settings,
    Tuning,
)

TUNING_VARIABLES = {
    "SPOOKD_LEASE_DURATION": "lease_duration",
    "SPOOKD_CLAIM_GRACE": "claim_grace",
    "SPOOKD_CLAIM_POLL": "claim_poll",
    "SPOOKD_WATCH_TIMEOUT": "watch_timeout",
    "SPOOKD_REGISTRATION_EVENT_AFTER": "registration_event_after",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("SPOOKD_" + flag.upper().replace("-", "_"), default)


#: The string options of ``spookd run``: (flag, metavar, default, help); each also reads SPOOKD_<FLAG>.
_RUN_OPTIONS: tuple[tuple[str, str, str | None, str], ...] = (
    ("config", "FILE", None, "YAML file to serve (watched for changes)"),
    ("configmap", "NAMESPACE/NAME", None, "ConfigMap to watch through the Kubernetes API"),
    ("configmap-key", "KEY", "config.yaml", "key of the ConfigMap holding the YAML (default: config.yaml)"),
    ("node-name", "NAME", None, "this node's name (default: $NODE_NAME, else the host name)"),
    (
        "plugin-dir",
        "DIR",
        DEFAULT_PLUGIN_DIR,
        f"the kubelet's device plugin directory (default: {DEFAULT_PLUGIN_DIR})",
    ),
    (
        "lease-namespace",
        "NAMESPACE",
        None,
        "namespace of the Leases that make shared devices exclusive "
        "(default: the ConfigMap's namespace; needed with --config for `exclusive: true`)",
    ),
    (
        "pod-resources-socket",
        "PATH",
        DEFAULT_POD_RESOURCES_SOCKET,
        "the kubelet's PodResources socket, read to release claims "
        f"(default: {DEFAULT_POD_RESOURCES_SOCKET})",
    ),
    (
        "http-addr",
        "HOST:PORT",
        ":8080",
        "address of /healthz, /readyz and /metrics (default: :8080; empty to disable)",
    ),
    (
        "dra-driver",
        "NAME",
        DEFAULT_DRA_DRIVER,
        f"DRA driver name, with --dra (default: {DEFAULT_DRA_DRIVER})",
    ),
    (
        "kubelet-dir",
        "DIR",
        DEFAULT_KUBELET_DIR,
        f"the kubelet's root, with --dra (default: {DEFAULT_KUBELET_DIR})",
    ),
    (
        "cdi-dir",
        "DIR",
        DEFAULT_CDI_DIR,
        f"where CDI specs are written, with --dra (default: {DEFAULT_CDI_DIR})",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(
        prog="spookd",
        description="A Kubernetes device plugin for virtual devices defined in YAML.",
        epilog="Every flag also reads the environment variable SPOOKD_<FLAG>, "
        "for example SPOOKD_LOG_LEVEL=debug.",
    )
    parser.add_argument("--version", action="version", version=f"spookd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="serve this node's devices to the kubelet")
    for flag, metavar, default, text in _RUN_OPTIONS:
        run.add_argument(f"--{flag}", metavar=metavar, default=_env(flag, default), help=text)
    run.add_argument(
        "--cleanup-stale-resources",
        action="store_true",
        default=(_env("cleanup-stale-resources", "") or "").lower() in ("1", "true", "yes"),
        help="remove resources this node stopped serving from the Node status once they reach 0 "
        "(needs get and patch on nodes/status)",
    )
    run.add_argument(
        "--dra",
        action="store_true",
        default=(_env("dra", "") or "").lower() in ("1", "true", "yes"),
        help="DRA mode: serve the kubelet's DRA plugin API v1 and write CDI specs instead of device plugins",
    )
    _logging_flags(run)

    validate = sub.add_parser("validate", help="check configurations; exit 2 on errors")
    validate.add_argument("files", metavar="FILE", nargs="*", help="YAML files to check; - reads stdin")
    validate.add_argument(
        "--configmap",
        action="append",
        default=[],
        metavar="NAMESPACE/NAME",
        help="a ConfigMap to check through the Kubernetes API (repeatable)",
    )
    validate.add_argument(
        "--configmap-key", default="config.yaml", metavar="KEY", help="its key (default: config.yaml)"
    )
    validate.add_argument(
        "--output", choices=("text", "json"), default="text", help="json: one object on stdout"
    )
    validate.add_argument(
        "--dra", action="store_true", help="also check what DRA mode (`spookd publish`) needs"
    )

    publish = sub.add_parser(
        "publish",
        help="DRA mode: keep the cluster's ResourceSlices and DeviceClasses equal to the configuration",
    )
    for flag, metavar, default, text in _RUN_OPTIONS[:3]:
        publish.add_argument(f"--{flag}", metavar=metavar, default=_env(flag, default), help=text)
    publish.add_argument(
        "--lease-namespace",
        metavar="NAMESPACE",
        default=_env("lease-namespace", os.environ.get("POD_NAMESPACE")),
        help="namespace of the leader Lease `spookd-publisher` (default: $POD_NAMESPACE; none: no election)",
    )
    publish.add_argument(
        "--identity",
        metavar="NAME",
        default=_env("identity"),
        help="this candidate's name in the Lease (default: $POD_NAME, else host name and process ID)",
    )
    _logging_flags(publish)

    render = sub.add_parser("render", help="show what a node would advertise and inject")
    render.add_argument("file", metavar="FILE", help="YAML configuration")
    render.add_argument("--node", default=_env("node"), metavar="NAME", help="node name to render for")
    render.add_argument(
        "--dra",
        action="store_true",
        help="print the ResourceSlices and DeviceClasses `spookd publish` would write (no --node)",
    )
    render.add_argument(
        "--node-labels",
        default=_env("node-labels", ""),
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="the node's labels, for mappings with a nodeSelector (default: none)",
    )
    render.add_argument(
        "--allocate",
        action="append",
        default=(_env("allocate") or "").split(),
        metavar="RESOURCE=ID[,ID...]",
        help="devices to allocate (repeatable; default: the first device of each resource)",
    )
    render.add_argument(
        "--output", choices=("text", "json"), default=_env("output", "text"), help="output format"
    )
    status = sub.add_parser("status", help="list every device, its nodes and who holds it (kubeconfig)")
    status.add_argument("--config", metavar="FILE", default=_env("config"), help="YAML configuration")
    status.add_argument(
        "--configmap", metavar="NAMESPACE/NAME", default=_env("configmap"), help="ConfigMap to read"
    )
    status.add_argument("--configmap-key", metavar="KEY", default=_env("configmap-key", "config.yaml"))
    status.add_argument(
        "--lease-namespace",
        metavar="NAMESPACE",
        default=_env("lease-namespace"),
        help="namespace of the Leases of exclusive devices (default: the ConfigMap's)",
    )
    status.add_argument("--kubeconfig", metavar="PATH", default=None, help="default: $KUBECONFIG")
    status.add_argument(
        "--output", choices=("text", "json"), default=_env("output", "text"), help="output format"
    )
    return parser


def _logging_flags(parser: argparse.ArgumentParser) -> None:
    from spookd.observe.logging import FORMATS, LEVELS

    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=_env("log-level", "info"),
        help="least severe level logged (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=_env("log-format", "auto"),
        help="text, json, or auto: JSON lines unless stderr is a terminal (default: auto)",
    )


def tuning() -> Tuning:
    """The tuning variables of the environment, checked (UsageError naming the variable)."""
    defaults = Tuning()
    values: dict[str, float | int] = {}
    for variable, field in TUNING_VARIABLES.items():
        text = os.environ.get(variable)
        if text is None:
            continue
        kind = type(getattr(defaults, field))
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise UsageError(
                f"{variable}={text!r} must be a positive {'whole ' if kind is int else ''}number"
            )
        values[field] = value
    return Tuning(**values)  # type: ignore[arg-type]


def node_name(flag: str | None) -> str:
    """--node-name, else $NODE_NAME, else the host name (SPEC §2)."""
    return flag or os.environ.get("NODE_NAME") or socket.gethostname()


def cmd_run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    from spookd.observe.logging import FORMATS, LEVELS

    # argparse checks choices only for flags given on the command line, not for
    # defaults taken from SPOOKD_* variables.
    for flag, value, allowed in (
        ("log-level", args.log_level, LEVELS),
        ("log-format", args.log_format, FORMATS),
    ):
        if value not in allowed:
            raise UsageError(
                f"argument --{flag} (or SPOOKD_{flag.upper().replace('-', '_')}): "
                f"invalid choice: {value!r} (choose from {', '.join(allowed)})"
            )
    if bool(args.config) == bool(args.configmap):
        raise UsageError("give exactly one of --config FILE or --configmap NAMESPACE/NAME")
    if args.configmap and args.configmap.count("/") != 1:
        raise UsageError(f"--configmap {args.configmap!r} must look like NAMESPACE/NAME")
    from spookd.naming import SocketPathError, assign_socket_names

    try:
        assign_socket_names([], args.plugin_dir)
    except SocketPathError as exc:
        raise UsageError(str(exc)) from exc
    http_addr = _parse_http_addr(args.http_addr) if args.http_addr else None
    if args.dra:
        _check_dra_paths(args.kubelet_dir, args.dra_driver)

    settings = Settings(
        node_name=node_name(args.node_name),
        plugin_dir=Path(args.plugin_dir),
        config=Path(args.config) if args.config else None,
        configmap=args.configmap,
        configmap_key=args.configmap_key,
        http_addr=http_addr,
        cleanup_stale_resources=args.cleanup_stale_resources,
        lease_namespace=args.lease_namespace,
        pod_resources_socket=args.pod_resources_socket,
        tuning=tuning(),
        dra=args.dra,
        dra_driver=args.dra_driver,
        kubelet_dir=Path(args.kubelet_dir),
        cdi_dir=Path(args.cdi_dir),
    )
    from spookd.observe.logging import setup_logging
    from spookd.runner import run_daemon

    setup_logging(args.log_level, args.log_format)
    run_daemon(settings)
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    """DRA mode's publisher, until SIGTERM/SIGINT."""
    if bool(args.config) == bool(args.configmap):
        raise UsageError("give exactly one of --config FILE or --configmap NAMESPACE/NAME")
    if args.configmap and args.configmap.count("/") != 1:
        raise UsageError(f"--configmap {args.configmap!r} must look like NAMESPACE/NAME")
    from spookd.settings import PublishSettings

    identity = args.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    settings = PublishSettings(
        config=Path(args.config) if args.config else None,
        configmap=args.configmap,
        configmap_key=args.configmap_key,
        lease_namespace=args.lease_namespace or None,
        identity=identity,
        tuning=tuning(),
    )
    from spookd.observe.logging import setup_logging
    from spookd.runner import run_publisher

    setup_logging(args.log_level, args.log_format)
    run_publisher(settings)
    return EXIT_OK


def _check_dra_paths(kubelet_dir: str, driver: str) -> None:
    from spookd.cdi import endpoint_socket, registration_socket
    from spookd.naming import MAX_SOCKET_PATH_BYTES

    if len(driver) > 63 or not re.fullmatch(
        r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+", driver
    ):
        raise UsageError(
            f"--dra-driver {driver!r} must be a DNS subdomain of at most 63 characters, like spookd.skao.int"
        )
    for path in (endpoint_socket(kubelet_dir, driver), registration_socket(kubelet_dir, driver)):
        if len(path.encode()) > MAX_SOCKET_PATH_BYTES:
            raise UsageError(
                f"socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes; "
                "use a shorter --kubelet-dir"
            )


def _parse_http_addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--http-addr {value!r} must look like HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


#: Allocator options set before anything loads yaml-rs, unless the environment sets them.
#: yaml-rs's mimalloc commits its first arena at load (4 MiB as transparent huge pages
#: where THP is on), most of which a daemon never uses: commit on demand instead
#: (docs/design.md, "Footprint").
ALLOCATOR_DEFAULTS = {"MIMALLOC_ARENA_EAGER_COMMIT": "0"}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line and exit with its status."""
    for name, value in ALLOCATOR_DEFAULTS.items():
        os.environ.setdefault(name, value)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(
                "missing command: run, validate, render, status or publish (see `spookd --help`)"
            )
        handler = {
            "run": cmd_run,
            "validate": cmd_validate,
            "render": cmd_render,
            "status": cmd_status,
            "publish": cmd_publish,
        }[args.command]
        status = handler(args)
    except UsageError as exc:
        print(f"spookd: error: {exc}", file=sys.stderr)
        status = EXIT_INVALID
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
