"""Label selectors for `list --label`: `K=V`, `K!=V`, `K` (has key), `!K`, `K in (a,b)`, `K notin (a,b)`.

Selectors are ANDed, as in Kubernetes, whose syntax users already know.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from .errors import UsageError

Selector = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9_.\-/]+"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*(.*?)\s*$")
_HAS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def parse_selector(text: str) -> Selector:
    """One selector string -> a predicate over a labels mapping."""
    if m := _SET_RE.match(text):
        key, op, body = m.groups()
        values = {v.strip() for v in body.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(text):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _HAS_RE.match(text):
        neg, key = m.groups()
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise UsageError(
        f"invalid label selector {text!r}: use K=V, K!=V, K, !K, 'K in (a,b)' or 'K notin (a,b)'"
    )


def parse_selectors(items: Iterable[str] | Mapping[str, str] | None) -> list[Selector]:
    """Selector strings, or a plain {key: value} dict meaning equality on each key."""
    if not items:
        return []
    if isinstance(items, Mapping):
        return [parse_selector(f"{k}={v}") for k, v in items.items()]
    return [parse_selector(s) for s in items]


def matches(labels: Mapping[str, str], selectors: Iterable[Selector]) -> bool:
    return all(sel(labels) for sel in selectors)


def parse_assignments(items: Iterable[str], what: str = "label") -> dict[str, str]:
    """`K=V` strings -> dict; used by `--label`, `--metadata` and `shelf label`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid {what} {item!r}: write it as KEY=VALUE")
        out[key.strip()] = value
    return out
