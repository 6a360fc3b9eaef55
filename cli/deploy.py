"""`shelf deploy kubernetes TARGET`: build the manifests in core, render them as YAML here.

To DIR (one file per object, plus the Containerfile and, with --bake, model.shelf) or to stdout
as one multi-document YAML stream (for `| kubectl apply -f -`). Hints go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .render import fail, stderr

deploy_app = typer.Typer(
    name="deploy",
    help="Write what it takes to run a stored model elsewhere (Kubernetes manifests).",
    no_args_is_help=True,
)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Objects -> one YAML stream; multi-line strings (the start script) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(
        documents, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100
    )


def _write(bundle: Any, output_dir: Path | None, containerfile: Path | None) -> None:
    from torchshelf.deploy import ARCHIVE_NAME

    if output_dir is None:
        typer.echo(to_yaml([doc for _, doc in bundle.documents]), nl=False)
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, doc in bundle.documents:
            (output_dir / name).write_text(to_yaml([doc]))
            stderr.print(f"wrote {output_dir / name}", highlight=False)
    target = containerfile or (output_dir / "Containerfile" if output_dir else None)
    if target is not None:
        target.write_text(bundle.containerfile)
        stderr.print(f"wrote {target}", highlight=False)
    if bundle.bake_tag is not None:
        import torchshelf

        base = output_dir or (containerfile.parent if containerfile else Path("."))
        torchshelf.models.export_model(bundle.bake_tag, base / ARCHIVE_NAME)
        stderr.print(f"wrote {base / ARCHIVE_NAME} ({bundle.bake_tag})", highlight=False)


# Option types of the longer options, kept here so the command's signature stays readable.
_Label = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", help="Serve the newest version matching K=V (repeatable)."),
]
_Remote = Annotated[
    str | None,
    typer.Option("--remote", help="s3://bucket/prefix the pods pull from (default: configured)."),
]
_Endpoint = Annotated[
    str | None,
    typer.Option("--endpoint-url", help="S3 endpoint for the pods (AWS_ENDPOINT_URL)."),
]
_OutputDir = Annotated[
    Path | None,
    typer.Option("--output-dir", "-o", help="Write one file per object here (default: stdout)."),
]
_Containerfile = Annotated[
    Path | None,
    typer.Option("--containerfile", help="Write the Containerfile here (default: in DIR)."),
]


@deploy_app.command("kubernetes")
def kubernetes(
    target: Annotated[str, typer.Argument(help="A model: name, name:version (pinned).")],
    label: _Label = None,
    remote: _Remote = None,
    endpoint_url: _Endpoint = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Pods (HPA minimum).")] = 1,
    max_replicas: Annotated[
        int | None,
        typer.Option("--max-replicas", min=1, help="HPA maximum (default: 2 x --replicas)."),
    ] = None,
    gpus_per_replica: Annotated[
        int, typer.Option("--gpus-per-replica", min=0, help="nvidia.com/gpu per pod.")
    ] = 0,
    image: Annotated[
        str | None, typer.Option("--image", help="Image (default: torchshelf-NAME:VERSION).")
    ] = None,
    kserve: Annotated[
        bool, typer.Option("--kserve", help="A KServe ServingRuntime + InferenceService (v2).")
    ] = False,
    output_dir: _OutputDir = None,
    containerfile: _Containerfile = None,
    bake: Annotated[
        bool, typer.Option("--bake", help="Put the local version into the image (no remote).")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Object name (default: model).")
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace.")] = None,
    cpu: Annotated[str, typer.Option("--cpu", help="CPU request per pod.")] = "1",
    memory: Annotated[str, typer.Option("--memory", help="Memory request and limit.")] = "2Gi",
    port: Annotated[int, typer.Option("--port", help="Container port.")] = 3000,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="serve --timeout (bounds the drain).")
    ] = 30.0,
    token_secret: Annotated[
        str | None,
        typer.Option("--token-secret", help="Secret with key 'token' (default: NAME-api-token)."),
    ] = None,
    s3_secret: Annotated[
        str | None, typer.Option("--s3-secret", help="Secret of AWS_* variables for the pull.")
    ] = None,
) -> None:
    """Kubernetes manifests: Deployment, Service, HPA, PDB (or KServe with --kserve)."""
    from torchshelf.deploy import plan_deployment
    from torchshelf.errors import ShelfError, UsageError

    try:
        if bake and output_dir is None and containerfile is None:
            raise UsageError(
                "--bake writes model.shelf beside the Containerfile: pass --output-dir"
            )
        bundle = plan_deployment(
            target,
            kserve=kserve,
            selectors=tuple(label or ()),
            remote=remote,
            endpoint_url=endpoint_url,
            name=name,
            namespace=namespace,
            image=image,
            replicas=replicas,
            max_replicas=max_replicas if max_replicas is not None else 2 * replicas,
            gpus_per_replica=gpus_per_replica,
            cpu=cpu,
            memory=memory,
            port=port,
            timeout=timeout,
            token_secret=token_secret,
            s3_secret=s3_secret,
            bake=bake,
        )
        _write(bundle, output_dir, containerfile)
    except ShelfError as exc:
        fail(exc)
    for hint in bundle.hints:
        stderr.print(f"next: {hint}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the `deploy` group to the app."""
    app.add_typer(deploy_app, name="deploy", rich_help_panel="Serve")
