"""Files of a hand-made run directory for the report tests."""

from __future__ import annotations

import json
import os


def write(path, obj) -> None:
    """`obj` as JSON at `path` (its folders made), or as JSON lines when it is a list (a metrics.jsonl)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if isinstance(obj, list):
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f)
