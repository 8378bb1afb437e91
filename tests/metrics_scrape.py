"""Read `/metrics` from a real server into {(sample name, labels): value}, for before/after deltas."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(session: aiohttp.ClientSession, base_url: str) -> Samples:
    async with session.get(base_url + "/metrics") as r:
        assert r.status == 200, r.status
        assert r.content_type == "text/plain"
        return parse(await r.text())


def value(samples: Samples, name: str, **labels: Any) -> float:
    """One series' value; 0 for a series not exported yet (a counter that never moved)."""
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: Any) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def families(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
