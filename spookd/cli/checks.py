"""The commands that read a configuration, print and exit: validate, render, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import msgspec

from spookd.cli.common import EXIT_INVALID, EXIT_OK, UsageError, read_config_file

if TYPE_CHECKING:
    from spookd.config import Config


def cmd_status(args: argparse.Namespace) -> int:
    """Every configured device with its nodes, their health and who holds it."""
    if bool(args.config) == bool(args.configmap):
        raise UsageError("give exactly one of --config FILE or --configmap NAMESPACE/NAME")
    if args.configmap and args.configmap.count("/") != 1:
        raise UsageError(f"--configmap {args.configmap!r} must look like NAMESPACE/NAME")
    import anyio

    from spookd.config import ConfigInvalid
    from spookd.kube import status

    configmap = (*args.configmap.split("/"), args.configmap_key) if args.configmap else None
    leases = args.lease_namespace or (configmap[0] if configmap else None)
    source = f"{args.configmap}:{args.configmap_key}" if configmap else args.config
    text = None if configmap else read_config_file(args.config)
    try:
        report = anyio.run(
            lambda: status.status(
                text, source, configmap=configmap, lease_namespace=leases, kubeconfig=args.kubeconfig
            )
        )
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    except (ConnectionError, LookupError) as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(report, indent=2) if args.output == "json" else status.text(report))
    return EXIT_OK


STDIN_SOURCE = "<stdin>"


def _validate_sources(args: argparse.Namespace) -> list[tuple[str, Callable[[], str | bytes]]]:
    """(source, read) per configuration to check, in command-line order."""
    if not args.files and not args.configmap:
        raise UsageError("give at least one FILE, - (standard input) or --configmap NAMESPACE/NAME")
    if args.files.count("-") > 1:
        raise UsageError("- (standard input) can be given only once")
    sources: list[tuple[str, Callable[[], str | bytes]]] = []
    for path in args.files:
        if path == "-":
            sources.append((STDIN_SOURCE, sys.stdin.buffer.read))
        else:
            sources.append((path, partial(read_config_file, path)))
    for ref in args.configmap:
        namespace, sep, name = ref.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise UsageError(f"--configmap {ref!r} must look like NAMESPACE/NAME")
        sources.append((f"{ref}:{args.configmap_key}", partial(_read_configmap, namespace, name, args)))
    return sources


def _read_configmap(namespace: str, name: str, args: argparse.Namespace) -> str:
    try:
        from spookd.sources.configmap import read_configmap
    except ImportError as exc:
        raise UsageError(
            f"--configmap needs kubernetes-asyncio: pip install 'spookd[configmap]' ({exc})"
        ) from exc
    import logging

    from loguru import logger

    # No log lines among the results: every problem comes back as the source's error.
    logger.disable("spookd")
    logging.getLogger("kubernetes_asyncio").setLevel(logging.ERROR)
    return asyncio.run(read_configmap(namespace, name, args.configmap_key))


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every source; print its errors (text on stderr, or one JSON object); exit 2 if any."""
    from spookd.config import ConfigError, ConfigInvalid, load_config
    from spookd.config.dralimits import check_dra

    results: list[dict[str, object]] = []
    errors: list[ConfigError] = []
    for source, read in _validate_sources(args):
        try:
            data = read()
            config = load_config(data, source)
            if args.dra:
                check_dra(config, data, source)
        except UsageError as exc:
            found = [ConfigError(source, 1, 1, "", str(exc))]
        except ConfigInvalid as exc:
            found = exc.errors
        else:
            devices = sum(len(m.devices) for m in config.mappings)
            counts = {"mappings": len(config.mappings), "devices": devices, "nodes": len(config.nodes())}
            results.append({"source": source, "valid": True, **counts})
            if args.output == "text":
                print(f"{source}: OK ({', '.join(f'{n} {what}' for what, n in counts.items())})")
            continue
        results.append({"source": source, "valid": False})
        errors += found
        if args.output == "text":
            for error in found:
                print(error, file=sys.stderr)
    if args.output == "json":
        report = {"valid": not errors, "sources": results, "errors": msgspec.to_builtins(errors)}
        print(json.dumps(report, indent=2))
    return EXIT_INVALID if errors else EXIT_OK


def _parse_allocation(specs: list[str]) -> dict[str, list[str]]:
    wanted: dict[str, list[str]] = {}
    for spec in specs:
        resource, sep, ids = spec.partition("=")
        if not sep or not resource or not ids:
            raise UsageError(f"--allocate {spec!r} must look like RESOURCE=ID[,ID...]")
        wanted.setdefault(resource, []).extend(i for i in ids.split(",") if i)
    return wanted


def cmd_render(args: argparse.Namespace) -> int:
    """Show what ``--node`` would advertise and the environment of an allocation."""
    if args.output not in ("text", "json"):
        raise UsageError(
            f"argument --output (or SPOOKD_OUTPUT): invalid choice: {args.output!r} (choose from text, json)"
        )
    from spookd.allocation import container_env
    from spookd.config import ConfigInvalid, load_config
    from spookd.config.dralimits import check_dra

    if not args.dra and not args.node:
        raise UsageError("the following arguments are required: --node")
    try:
        data = read_config_file(args.file)
        config = load_config(data, args.file)
        if args.dra:
            check_dra(config, data, args.file)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    if args.dra:
        return _render_dra(config, args.output)
    from spookd.config.labels import parse_labels

    try:
        labels = parse_labels(args.node_labels)
    except ValueError as exc:
        raise UsageError(f"--node-labels: {exc}") from exc
    desired = config.for_node(args.node, labels)
    wanted = _parse_allocation(args.allocate) or {
        resource: [min(devices)] for resource, devices in desired.items()
    }
    # what the kubelet sees: one device ID per seat (capacity), spookd.naming
    seats = {r: {s: d for d in devices.values() for s in d.seats()} for r, devices in desired.items()}
    env: dict[str, str] = {}
    for resource, ids in sorted(wanted.items()):
        devices = seats.get(resource)
        if devices is None:
            raise UsageError(f"node {args.node} has no resource {resource}")
        unknown = [i for i in ids if i not in devices]
        if unknown:
            raise UsageError(f"{resource} on node {args.node} has no device {', '.join(unknown)}")
        env.update(container_env(resource, [devices[i] for i in ids]))
    resources = {resource: sorted(devices) for resource, devices in sorted(seats.items())}
    if args.output == "json":
        print(
            json.dumps(
                {
                    "node": args.node,
                    "labels": labels,
                    "resources": resources,
                    "allocation": wanted,
                    "env": dict(sorted(env.items())),
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"node {args.node} advertises:")
    if not resources:
        print("  (nothing)")
    for resource, ids in resources.items():
        print(f"  {resource}: {len(ids)}  ({', '.join(ids)})")
    if env:
        allocation = "; ".join(f"{r}={','.join(ids)}" for r, ids in sorted(wanted.items()))
        print(f"\na container given {allocation} gets:")
        for key, value in sorted(env.items()):
            print(f"  {key}={value}")
    return EXIT_OK


def _render_dra(config: Config, output: str) -> int:
    from spookd.config.yamlnodes import dump_documents
    from spookd.draslices import desired_pools, device_classes, pool_slices

    objects = device_classes(config)
    for pool in desired_pools(config).values():
        objects.extend(pool_slices(pool, 1))
    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(dump_documents(objects), end="")
    return EXIT_OK
