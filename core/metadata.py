"""Labels and metadata as `save_model` takes them: checked, and converted to JSON like BentoML.

BentoML keeps metadata in YAML and converts a few types first (`_validate_metadata_entry` in
`bentoml/_internal/utils/__init__.py`); a manifest is JSON, so torchshelf converts the same
types, and the ones YAML kept natively, to their JSON form:

| value                         | stored as                                       | BentoML     |
|-------------------------------|-------------------------------------------------|-------------|
| `numpy.ndarray`               | `.tolist()` (nested lists)                      | same        |
| numpy scalar (`np.float32`..) | `.item()` (a Python number / bool)              | same        |
| `tuple`                       | list                                            | same in YAML|
| `datetime.datetime`           | `.isoformat()` (`2026-12-01T22:15:00+00:00`)    | same (cattr)|
| `datetime.date`, `.time`      | `.isoformat()` (`2026-12-01`, `22:15:00`)       | YAML value  |
| `datetime.timedelta`          | `.total_seconds()` (a float)                    | YAML fails  |
| `None` as a top-level value   | refused (`UsageError`, a `ValueError`)          | ValueError  |
| `bytes`, `complex`, objects   | refused (`UsageError`): use `custom_objects`    | YAML fails  |

Keys must be strings (BentoML also takes int/float keys, which JSON would turn into strings).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .errors import UsageError


def check_labels(labels: object) -> dict[str, str]:
    """`save_model`'s `labels` (None or a mapping) as a checked `dict[str, str]`.

    The rule itself is `records.check_labels`, shared with `set_labels` locally and remotely.
    """
    from .records import check_labels as check

    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise UsageError(f"labels must be a dict of str to str, not {type(labels).__name__}")
    return check(dict(labels))


def convert_metadata(metadata: object) -> dict[str, Any]:
    """A JSON-ready copy of `metadata`, converting numpy and datetime values (see the table)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise UsageError(f"metadata must be a dict, not {type(metadata).__name__}")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise UsageError(f"metadata keys must be strings, got {key!r}")
        if value is None:
            raise UsageError(
                f"metadata {key!r} is None; leave the key out, or store a value such as '' or 0"
            )
        out[key] = _entry(value, key)
    return out


def _entry(value: Any, where: str) -> Any:
    kind = type(value)
    if kind.__module__ == "numpy" or kind.__module__.startswith("numpy."):
        if getattr(value, "ndim", 0) > 0 and hasattr(value, "tolist"):
            return _entry(value.tolist(), where)
        if hasattr(value, "item"):
            return _entry(value.item(), where)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value  # NaN and inf stay: manifests are written with allow_nan, as before
    if isinstance(value, Mapping):
        return {_key(k, where): _entry(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_entry(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise UsageError(
        f"metadata {where!r}: {kind.__name__} is not JSON; metadata takes str, int, float, bool, "
        "lists, dicts, numpy values and datetimes (use custom_objects for other objects)"
    )


def _key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise UsageError(f"metadata {where!r}: keys must be strings, got {key!r}")
    return key
