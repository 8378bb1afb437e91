"""Read `/metrics` from a real server into {(sample name, labels): value}, for before/after deltas."""

from __future__ import annotations

import re
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


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition declares: samples seen, plus the names a declared family's
    samples carry (a labelled counter that never moved is declared with HELP/TYPE but has no sample)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                 "bool", "offset", "inf", "nan"}
_STRIPS = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # string literals
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges and subqueries
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # label lists
    re.compile(r"\$\{?\w+\}?"),  # Grafana variables ($__rate_interval, ${sale})
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords or labels."""
    for pattern in _STRIPS:
        expr = pattern.sub(" ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        word, call = match.group(1), match.group(2)
        if call is None and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names
