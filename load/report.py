"""Reading generator output and printing the one `make load` report (no network I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Entry = dict[str, Any]


def read_locust_json(path: Path | str) -> dict[tuple[str, str], Entry]:
    """Locust's `--json-file` output keyed by (request type, name). Unlike the CSV files, which Locust
    rewrites once a second, it is written after every user stopped, so its counts are final."""
    with open(path) as f:
        return {(e["method"], e["name"]): e for e in json.load(f)}


def count(stats: dict[tuple[str, str], Entry], kind: str, name: str) -> int:
    e = stats.get((kind, name))
    return int(e["num_requests"]) if e else 0


def outcomes(stats: dict[tuple[str, str], Entry], kind: str = "ORDER") -> dict[str, int]:
    return {name: int(e["num_requests"]) for (k, name), e in sorted(stats.items()) if k == kind}
