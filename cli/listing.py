"""`shelf list` and `shelf get`: the bodies of the two commands scripts run most.

Both the Typer commands (store_cmds) and the quick path (quick.py) call these, so the output is
one implementation whichever parser read the command line. Nothing here imports typer or rich:
the quick path exists to answer without them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from torchshelf.diskspace import human_size

from .render import print_columns, print_fields, print_json

if TYPE_CHECKING:
    from torchshelf.records import ModelStore

LIST_OUTPUTS = ("table", "json", "tags")
GET_OUTPUTS = ("table", "json")
LIST_HEADERS = ["TAG", "CREATED (UTC)", "FORMAT", "SIZE", "LABELS"]


def open_source(remote: str | None) -> ModelStore:
    """The store a command works on: the remote for `--remote [URL]`, else the local store."""
    if remote is not None:
        from .remote_cmds import open_remote

        return open_remote(remote)
    from torchshelf.store import default_store

    return default_store()


def list_versions(
    name: str | None,
    selectors: list[str],
    *,
    latest: bool = False,
    output: str = "table",
    remote: str | None = None,
) -> None:
    """Print the matching versions, newest first, as a table, one JSON document or bare tags."""
    source = open_source(remote)
    if output == "json":
        print_json([i.to_dict() for i in source.list_info(name, selectors, latest=latest)])
        return
    found = source.list(name, selectors, latest=latest)
    if output == "tags":
        sys.stdout.write("".join(f"{m.name}:{m.version}\n" for m in found))
        sys.stdout.flush()
        return
    sizes: dict[int, str] = {}
    label_text: dict[int, str] = {}  # by id: versions of one name share their label sets
    rows = []
    for m in found:
        labels = label_text.get(id(m.labels))
        if labels is None:
            labels = ",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))
            label_text[id(m.labels)] = labels
        size = sizes.get(m.size) or sizes.setdefault(m.size, human_size(m.size))
        created = m.creation_time[:19].replace("T", " ")
        rows.append([f"{m.name}:{m.version}", created, m.format, size, labels])
    print_columns(LIST_HEADERS, rows)


def show_version(tag: str, *, output: str = "table", remote: str | None = None) -> None:
    """Print one version's manifest: as `key  value` lines, or as one JSON document."""
    info = open_source(remote).get(tag).to_dict()
    if output == "json":
        print_json(info)
        return
    fields = [
        (key, str(info[key]))
        for key in (
            "tag",
            "path",
            "creation_time",
            "format",
            "module_class",
            "torch_version",
            "trusted",
        )
    ]
    fields.append(("size", human_size(info["size"])))
    for key in ("labels", "metadata", "signatures"):
        fields.append((key, json.dumps(info[key], sort_keys=True) if info[key] else "-"))
    fields.append(("custom_objects", ", ".join(info["custom_objects"]) or "-"))
    for rel, rec in info["files"].items():
        fields.append(("file", f"{rel}  {human_size(rec['size'])}  sha256:{rec['sha256'][:16]}"))
    print_fields(fields)
