"""Versioning: save candidates, promote one with labels, then load the newest production model.

Versions are immutable; labels are not, so a promotion is a label change, not a new copy.
The store answers the label query itself (`models.list(labels=...)`, newest first), as does the
command line: `shelf list production_model --label stage=production --latest`.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/versioning.py
"""

from __future__ import annotations

from datetime import datetime, timezone

import torch

import torchshelf


def save_versioned_model(
    model: torch.nn.Module, version: str, stage: str = "staging"
) -> torchshelf.Tag:
    """Save with a semantic version as the version itself (and as a label, to filter on)."""
    return torchshelf.save_model(
        name="production_model",
        model=model,
        version=version,
        labels={"version": version, "stage": stage},
        metadata={
            "created_at": datetime.now(timezone.utc).isoformat(),
            "pytorch_version": torch.__version__,
        },
    )


def newest_production(name: str) -> torchshelf.Model:
    """The newest version labelled stage=production; NotFound if none is."""
    found = torchshelf.models.list(name, labels={"stage": "production"})
    if not found:
        raise torchshelf.NotFound(
            f"no {name} version is labelled stage=production; promote one first"
        )
    return found[0]  # newest first


def main() -> None:
    torch.manual_seed(0)
    tags = {v: save_versioned_model(torch.nn.Linear(4, 2), v) for v in ("1.0.0", "1.1.0", "2.0.0")}

    # Promote 1.0.0, then 1.1.0, to production; 2.0.0 stays in staging; 1.0.0 is retired.
    torchshelf.models.set_labels(tags["1.0.0"], {"stage": "production"})
    torchshelf.models.set_labels(tags["1.1.0"], {"stage": "production"})
    torchshelf.models.set_labels(tags["1.0.0"], {"stage": "archived"})

    for ref in torchshelf.models.list("production_model"):
        print(f"{ref.tag}  stage={ref.labels['stage']}")
    latest_prod = newest_production("production_model")
    model = torchshelf.load_model(latest_prod.tag)
    assert latest_prod.version == "1.1.0" and isinstance(model, torch.nn.Module)
    print(
        f"serving {latest_prod.tag} (newest of {len(tags)} versions is "
        f"{torchshelf.get('production_model:latest').version}, still in staging)"
    )


if __name__ == "__main__":
    main()
