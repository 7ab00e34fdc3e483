"""The module-scoped cluster fixture the e2e modules share, and its timings report.

``reported_cluster(request, title, report)`` prepares a ``Cluster`` (and starts the
controllers unless told not to), yields it, brings it down, and writes the timings
and ``cluster.notes`` to ``LOGS/<report>`` and to the terminal, after the module's
tests, whether they passed or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from e2e.cluster import LOGS, Cluster

__all__ = ["reported_cluster"]


@contextmanager
def reported_cluster(
    request: pytest.FixtureRequest, title: str, report: str, *, controllers: bool = True
) -> Iterator[Cluster]:
    """A prepared cluster (with scheduler and controllers when ``controllers``), reported on at the end."""
    began = time.monotonic()
    cluster = Cluster()
    try:
        cluster.prepare()
        if controllers:
            cluster.start_controllers()
        yield cluster
    finally:
        cluster.down()
        cluster.timings["total"] = time.monotonic() - began
        lines = [f"{name:>40}: {seconds:7.2f} s" for name, seconds in cluster.timings.items()]
        if cluster.image is not None:
            lines.append(f"{'spookd image size (buildah)':>40}: {cluster.image.size}")
            lines.append(f"{'spookd image archive':>40}: {cluster.image.archive_size / 1e6:7.1f} MB")
        text = "\n".join([f"{title} (logs in {LOGS}):", *lines, *cluster.notes])
        (LOGS / report).write_text(text + "\n")
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("")
                for line in text.splitlines():
                    reporter.write_line(line)
