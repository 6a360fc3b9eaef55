"""Store commands: save, list, get, label, delete, export, import, trust, verify, gc.

Each parses its arguments, calls one core function and renders the result. None imports torch
unless its work needs it (`save` does; `list`, `get`, `label`, `delete` never do).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from torchshelf.diskspace import human_size

from .listing import list_versions, open_source, show_version
from .remote_cmds import REMOTE_HELP, RemoteFlagCommand, RemoteOption, open_remote
from .render import fail, stderr, stdout


class Output(str, Enum):
    table = "table"
    json = "json"
    tags = "tags"


class InfoOutput(str, Enum):
    table = "table"
    json = "json"


def _parse_signature(text: str) -> tuple[str, dict[str, Any]]:
    """`METHOD[:batchable[,batch_dim=N][,shape=-1x64][,dtype=float32]]`."""
    from torchshelf.errors import UsageError

    method, _, opts = text.partition(":")
    sig: dict[str, Any] = {"batchable": False, "batch_dim": 0}
    spec: dict[str, Any] = {}
    for opt in filter(None, (o.strip() for o in opts.split(","))):
        key, sep, value = opt.partition("=")
        try:
            if key == "batchable" and not sep:
                sig["batchable"] = True
            elif key == "batchable":
                sig["batchable"] = value.lower() in ("1", "true", "yes")
            elif key == "batch_dim":
                sig["batch_dim"] = int(value)
            elif key == "shape":
                spec["shape"] = [int(d) for d in value.replace("x", ",").split(",") if d]
            elif key == "dtype":
                spec["dtype"] = value
            else:
                raise ValueError(key)
        except ValueError:
            raise UsageError(
                f"invalid --signature {text!r}: use METHOD[:batchable[,batch_dim=N][,shape=-1x64][,dtype=float32]]"
            ) from None
    if spec:
        sig["input_spec"] = spec
    return method.strip(), sig


def _metadata(items: list[str], file: Path | None) -> dict[str, Any]:
    from torchshelf.errors import UsageError
    from torchshelf.selectors import parse_assignments

    meta: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--metadata-file {file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--metadata-file {file} must hold a JSON object")
        meta.update(loaded)
    for key, raw in parse_assignments(items, "metadata").items():
        try:
            meta[key] = json.loads(raw)
        except ValueError:
            meta[key] = raw
    return meta


def _custom_objects(items: list[str]) -> dict[str, Any]:
    """`K=FILE`: .json -> its value, .safetensors -> dict of tensors, .txt -> text, else bytes."""
    from torchshelf.errors import UsageError
    from torchshelf.selectors import parse_assignments

    out: dict[str, Any] = {}
    for key, value in parse_assignments(items, "custom object").items():
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError(f"--custom-object {key}: file {value} does not exist")
        if path.suffix == ".json":
            try:
                out[key] = json.loads(path.read_text())
            except ValueError as exc:
                raise UsageError(
                    f"--custom-object {key}: {path} is not valid JSON: {exc}"
                ) from None
        elif path.suffix == ".safetensors":
            from torchshelf.weights import read_safetensors

            out[key] = {k: v.clone() for k, v in read_safetensors(path).items()}
        elif path.suffix == ".txt":
            out[key] = path.read_text()
        else:
            out[key] = path.read_bytes()
    return out


def save(
    name: Annotated[str, typer.Argument(help="Model name, e.g. classifier.")],
    source: Annotated[
        str,
        typer.Argument(
            help="TorchScript file, .safetensors (with --class), or file.py:attr / module:attr."
        ),
    ],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Explicit version (default: time-ordered auto version)."),
    ] = None,
    label: Annotated[list[str], typer.Option("--label", "-l", help="K=V label; repeatable.")] = [],  # noqa: B006
    metadata: Annotated[
        list[str],
        typer.Option(
            "--metadata",
            "-m",
            help="K=V metadata (V parsed as JSON when it can be); repeatable.",
        ),
    ] = [],  # noqa: B006
    metadata_file: Annotated[
        Path | None, typer.Option("--metadata-file", help="JSON object of metadata.")
    ] = None,
    custom_object: Annotated[
        list[str],
        typer.Option(
            "--custom-object",
            help="K=FILE (.json, .safetensors, .txt or raw bytes); repeatable.",
        ),
    ] = [],  # noqa: B006
    signature: Annotated[
        list[str],
        typer.Option(
            "--signature",
            help="METHOD[:batchable[,batch_dim=N][,shape=-1x64][,dtype=float32]]; repeatable.",
        ),
    ] = [],  # noqa: B006
    class_path: Annotated[
        str | None,
        typer.Option("--class", help="package.module:Class for a .safetensors source."),
    ] = None,
    init_json: Annotated[
        str | None,
        typer.Option("--init-json", help="Constructor kwargs for --class, as a JSON object."),
    ] = None,
) -> None:
    """Save a model into the store and print its tag (so TAG=$(shelf save ...) works)."""
    import torchshelf
    from torchshelf.selectors import parse_assignments
    from torchshelf.sources import load_source
    from torchshelf.tag import validate_name, validate_version

    from .progress import byte_progress

    # Bad names fail before the source is imported (and torch with it).
    validate_name(name)
    if version is not None:
        validate_version(version)
    labels = parse_assignments(label)
    meta = _metadata(metadata, metadata_file)
    sigs = dict(_parse_signature(s) for s in signature) or None
    objects = _custom_objects(custom_object)
    model, init_kwargs = load_source(source, class_path=class_path, init_json=init_json)
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    with byte_progress(f"saving {name}", total) as progress:
        tag = torchshelf.save_model(
            name,
            model,
            signatures=sigs,
            labels=labels,
            metadata=meta,
            custom_objects=objects,
            version=version,
            init_kwargs=init_kwargs,
            progress=progress,
        )
    stdout.print(str(tag), highlight=False)


def list_(
    name: Annotated[str | None, typer.Argument(help="Only this model name.")] = None,
    label: Annotated[
        list[str],
        typer.Option(
            "--label", "-l", help="Selector: K=V, K!=V, K, 'K in (a,b)'; repeatable, ANDed."
        ),
    ] = [],  # noqa: B006
    latest: Annotated[
        bool, typer.Option("--latest", help="Only the newest version of each name.")
    ] = False,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, json or tags.")
    ] = Output.table,
    remote: RemoteOption = None,
) -> None:
    """List stored versions, newest first (with --remote: the versions on the remote).

    An unknown NAME lists nothing and exits 0, so scripts can test the output; the Python
    API (`torchshelf.models.list(name)`) raises NotFound instead, as BentoML does.
    """
    list_versions(name, label, latest=latest, output=output.value, remote=remote)


def get(
    tag: Annotated[str, typer.Argument(help="name, name:latest or name:version.")],
    output: Annotated[
        InfoOutput, typer.Option("--output", "-o", help="table or json.")
    ] = InfoOutput.table,
    remote: RemoteOption = None,
) -> None:
    """Show one version's manifest: labels, metadata, signatures, files."""
    show_version(tag, output=output.value, remote=remote)


def label(
    tag: Annotated[str, typer.Argument(help="name, name:latest or name:version.")],
    labels: Annotated[
        list[str], typer.Argument(help="K=V labels to set.", show_default=False)
    ] = [],  # noqa: B006
    remove: Annotated[
        list[str], typer.Option("--remove", "-r", help="Label key to remove; repeatable.")
    ] = [],  # noqa: B006
    remote: RemoteOption = None,
) -> None:
    """Set or remove labels on one version (e.g. promote: stage=production)."""
    from torchshelf.errors import UsageError
    from torchshelf.selectors import parse_assignments

    if not labels and not remove:
        raise UsageError("nothing to do: give K=V labels and/or --remove K")
    m = open_source(remote).set_labels(tag, parse_assignments(labels), remove)
    stderr.print(
        f"{m.name}:{m.version}: "
        + (",".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "(no labels)"),
        highlight=False,
    )


def delete(
    tags: Annotated[
        list[str], typer.Argument(help="name:version, or a bare name for all its versions.")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete versions (a bare name deletes every version of it)."""
    import torchshelf

    if not yes and sys.stdin.isatty():
        from rich.prompt import Confirm

        if not Confirm.ask(f"Delete {', '.join(tags)}?", console=stderr.console, default=False):
            stderr.print("aborted")
            raise typer.Exit(1)
    for tag in tags:
        for gone in torchshelf.models.delete(tag):
            stderr.print(f"deleted {gone}", highlight=False)


def export_(
    tag: Annotated[str, typer.Argument(help="name, name:latest or name:version.")],
    file: Annotated[
        str,
        typer.Argument(
            help="Archive to write; '.shelf' is added when it has no extension, and a "
            "directory (e.g. '.') gets NAME-VERSION.shelf inside."
        ),
    ],
) -> None:
    """Export one version as a tar archive."""
    import torchshelf

    from .progress import byte_progress

    ref = torchshelf.get(tag)
    with byte_progress(f"exporting {ref.tag}", ref.info.size) as progress:
        written = torchshelf.models.export_model(ref.tag, file, progress=progress)
    stderr.print(f"exported {ref.tag} to {written}", highlight=False)


def import_(
    file: Annotated[Path, typer.Argument(help="Archive made by `shelf export`.")],
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Trust its pickled parts (they run code when loaded)."),
    ] = False,
) -> None:
    """Import a version from an archive; prints its tag."""
    import torchshelf

    from .progress import byte_progress

    size = file.stat().st_size if file.is_file() else None
    with byte_progress(f"importing {file.name}", size) as progress:
        model = torchshelf.models.import_model(file, trust=trust, progress=progress)
    stdout.print(str(model.tag), highlight=False)
    if (
        not trust
        and model.manifest.structure.get("pickle")
        and not model.manifest.structure.get("class")
    ):
        stderr.print(
            f"note: {model.tag} is untrusted; its structure is a pickle, so loading it needs `shelf trust {model.tag}`",
            highlight=False,
        )


def trust(
    tag: Annotated[str, typer.Argument(help="name:version of an imported model.")],
) -> None:
    """Trust an imported version, allowing its pickled parts to be loaded."""
    import torchshelf

    model = torchshelf.models.trust(tag)
    stderr.print(f"trusted {model.tag}", highlight=False)


def verify(
    tags: Annotated[
        list[str] | None, typer.Argument(help="Versions to check (default: all).")
    ] = None,
) -> None:
    """Re-hash every file against its manifest; exit 1 on any mismatch."""
    import torchshelf

    bad = 0
    checked = 0
    for tag, error in torchshelf.models.verify(tags or []):
        checked += 1
        if error is None:
            stdout.print(f"[green]ok[/]      {tag}", highlight=False)
        else:
            bad += 1
            stdout.print(f"[red]FAILED[/]  {tag}: {error}", highlight=False)
    stderr.print(f"{checked} checked, {bad} failed", highlight=False)
    if bad:
        raise typer.Exit(1)


def gc(
    remote: Annotated[
        str | None,
        typer.Option(
            "--remote",
            metavar="[URL]",
            help=REMOTE_HELP + " Removes leftovers of interrupted pushes there.",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            help="With --remote: only leftovers idle this many hours (a push may still be running).",
        ),
    ] = 24.0,
) -> None:
    """Remove leftovers of interrupted saves, imports and deletes; report what was freed."""
    import torchshelf

    if remote is not None:
        report = open_remote(remote).gc(older_than=older_than * 3600)
    else:
        report = torchshelf.models.gc()
    for entry in report.removed:
        stdout.print(f"removed {entry}", highlight=False)
    stdout.print(
        f"freed {human_size(report.bytes_freed)} ({report.bytes_freed} bytes) in {len(report.removed)} entries",
        highlight=False,
    )


__all__ = ["register", "fail"]


def register(app: typer.Typer) -> None:
    """Add the store commands to the app."""
    app.command(rich_help_panel="Store")(save)
    app.command("list", rich_help_panel="Store", cls=RemoteFlagCommand)(list_)
    app.command(rich_help_panel="Store", cls=RemoteFlagCommand)(get)
    app.command(rich_help_panel="Store", cls=RemoteFlagCommand)(label)
    app.command(rich_help_panel="Store")(delete)
    app.command("export", rich_help_panel="Store")(export_)
    app.command("import", rich_help_panel="Store")(import_)
    app.command(rich_help_panel="Store")(trust)
    app.command(rich_help_panel="Store")(verify)
    app.command(rich_help_panel="Store", cls=RemoteFlagCommand)(gc)
