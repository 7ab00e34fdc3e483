"""Write the configuration's JSON Schema (docs/config.schema.json) and type the chart's
``deviceMapping`` with it (helm/spookd/values.schema.json): `nox -s schema`.

Both files are generated from spookd.config.model by spookd.config.schema;
tests/test_schema.py fails while either differs from what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spookd.config.schema import chart_values_schema, config_schema, render

ROOT = Path(__file__).resolve().parent.parent
CONFIG_SCHEMA = ROOT / "docs" / "config.schema.json"
VALUES_SCHEMA = ROOT / "helm" / "spookd" / "values.schema.json"


def main() -> int:
    """Write both files; print which changed."""
    wanted = {
        CONFIG_SCHEMA: render(config_schema()),
        VALUES_SCHEMA: render(chart_values_schema(json.loads(VALUES_SCHEMA.read_text()))),
    }
    for path, text in wanted.items():
        changed = not path.exists() or path.read_text() != text
        if changed:
            path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
