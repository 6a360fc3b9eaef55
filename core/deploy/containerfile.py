"""The Containerfile beside the manifests: the pinned torchshelf, and a model only with --bake.

Without `--bake` the image holds no model: the pods pull the version from the remote at start,
so one image serves every version and a label change needs no rebuild. With `--bake` the
version is imported into the image's store at build time from `model.shelf` (an archive
`shelf deploy --bake` writes beside it), mounted for that one step so it leaves no layer.
"""

from __future__ import annotations

from .pod import RUN_AS
from .spec import DeploySpec

__all__ = ["ARCHIVE_NAME", "containerfile"]

ARCHIVE_NAME = "model.shelf"


def containerfile(spec: DeploySpec) -> str:
    """The Containerfile text (OCI; builds with podman or docker buildx)."""
    extras = "s3,fast" if not spec.bake else "fast"
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# Written by `shelf deploy` (torchshelf {spec.torchshelf_version}) for {spec.tag}.",
        f"# Build: podman build -t {spec.image} -f Containerfile .",
        f"FROM python:{spec.python_version}-slim",
        "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1",
        # torch first, pinned to the version that saved and tested the model here
        f"RUN pip install torch=={spec.torch_version} \\",
        f' && pip install "torchshelf[{extras}]=={spec.torchshelf_version}"',
        f"RUN useradd --uid {RUN_AS} --user-group --no-create-home --home-dir /tmp shelf",
    ]
    if spec.bake:
        lines += [
            f"ENV TORCHSHELF_HOME={spec.store_path}",
            f"RUN --mount=type=bind,source={ARCHIVE_NAME},target=/tmp/{ARCHIVE_NAME} \\",
            f"    shelf import /tmp/{ARCHIVE_NAME} --trust && shelf verify {spec.tag}",
        ]
    lines += [
        f"USER {RUN_AS}",
        f"EXPOSE {spec.port}",
        'CMD ["shelf", "--help"]',
        "",
    ]
    return "\n".join(lines)
