"""Nothing from an imported archive is unpickled until the user trusts it."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch
import zoo
from conftest import Shelf, read_members, rewrite_manifest, write_tar

import torchshelf


class Trap:
    """Unpickling this creates `marker`: the side effect that must not happen untrusted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _local_model(marker: Path) -> torch.nn.Module:
    class Local(torch.nn.Module):  # not importable: only the pickle form can rebuild it
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    model = Local()
    model.trap = Trap(marker)  # unpickling the structure would create the marker
    return model


@pytest.fixture
def imported(tmp_path: Path, store_home: Path) -> dict[str, object]:
    """Save in one store, export, import (untrusted) into `store_home`."""
    origin = tmp_path / "origin"
    markers = {"structure": tmp_path / "structure-ran", "object": tmp_path / "object-ran"}
    torch.manual_seed(0)
    local = _local_model(markers["structure"]).eval()
    pickled = torchshelf.save_model(
        "local", local, custom_objects={"tok": Trap(markers["object"])}, store=origin
    )
    importable = torchshelf.save_model(
        "mlp", zoo.MLP(), custom_objects={"tok": Trap(markers["object"])}, store=origin
    )
    scripted = torchshelf.save_model("ts", torch.jit.script(zoo.MLP()), store=origin)
    assert not any(m.exists() for m in markers.values()), "saving must not unpickle"
    tags = {}
    for key, tag in (("pickled", pickled), ("importable", importable), ("scripted", scripted)):
        archive = torchshelf.models.export_model(tag, tmp_path / f"{key}.shelf", store=origin)
        tags[key] = torchshelf.models.import_model(archive).tag
    return {"tags": tags, "markers": markers, "local": local, "origin": origin}


def test_an_imported_pickle_structure_is_untrusted_until_shelf_trust(
    imported: dict, shelf: Shelf
) -> None:
    tag, markers = imported["tags"]["pickled"], imported["markers"]
    ref = torchshelf.get(tag)
    assert not ref.trusted and not ref.info.trusted
    with pytest.raises(torchshelf.UntrustedError, match=f"shelf trust {tag}"):
        torchshelf.load_model(tag)
    with pytest.raises(torchshelf.UntrustedError, match="shelf trust"):
        ref.custom_objects["tok"]
    assert not markers["structure"].exists(), "the structure pickle ran untrusted"
    assert not markers["object"].exists(), "the custom-object pickle ran untrusted"

    proc = shelf("trust", str(tag))
    assert proc.returncode == 0, proc.stderr
    assert torchshelf.get(tag).trusted
    model = torchshelf.load_model(tag)
    x = torch.randn(3, 4)
    assert torch.equal(model(x), imported["local"](x))
    assert markers["structure"].exists()  # trusted, the pickle does run: the gate is what held it
    torchshelf.get(tag).custom_objects["tok"]
    assert markers["object"].exists()
    assert torchshelf.models.verify([tag]) == [(tag, None)]


def test_an_importable_class_model_loads_untrusted_but_its_pickles_stay_locked(
    imported: dict,
) -> None:
    tag, markers = imported["tags"]["importable"], imported["markers"]
    model = torchshelf.load_model(tag)
    assert type(model) is zoo.MLP
    expected = torchshelf.load_model(tag, store=imported["origin"])
    x = torch.randn(2, 8)
    assert torch.equal(model(x), expected(x))
    with pytest.raises(torchshelf.UntrustedError):
        torchshelf.get(tag).custom_objects["tok"]
    assert not markers["structure"].exists() and not markers["object"].exists()


def test_torchscript_loads_untrusted(imported: dict) -> None:
    assert isinstance(torchshelf.load_model(imported["tags"]["scripted"]), torch.jit.ScriptModule)


def test_import_with_trust_loads_at_once(imported: dict, tmp_path: Path) -> None:
    tag = imported["tags"]["pickled"]
    archive = torchshelf.models.export_model(tag, tmp_path / "again.shelf")
    ref = torchshelf.models.import_model(archive, trust=True, store=tmp_path / "third")
    assert ref.trusted
    assert isinstance(ref.load_model(), torch.nn.Module)


def test_cli_import_notes_that_a_pickle_structure_needs_trust(
    imported: dict, tmp_path: Path, shelf: Shelf
) -> None:
    tag = imported["tags"]["pickled"]
    archive = torchshelf.models.export_model(tag, tmp_path / "cli.shelf")
    torchshelf.models.delete(tag)
    proc = shelf("import", str(archive))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tag)
    assert "shelf trust" in proc.stderr


def test_a_locally_saved_pickle_is_trusted(store_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "local-ran"
    tag = torchshelf.save_model("mine", _local_model(marker))
    assert torchshelf.get(tag).trusted
    torchshelf.load_model(tag)
    assert marker.exists()


@pytest.mark.parametrize(
    "evil_class",
    [
        {"class": "subprocess:Popen", "init_kwargs": {"args": ["touch", "MARKER"]}},
        {"class": "pathlib:Path", "init_kwargs": {}},
        {"class": "os:system", "init_kwargs": {}},
    ],
    ids=["subprocess.Popen", "pathlib.Path", "not a class"],
)
def test_an_imported_manifest_cannot_name_an_arbitrary_class_to_build(
    imported: dict, tmp_path: Path, evil_class: dict
) -> None:
    """The class form runs only an nn.Module's __init__, never any class the manifest names."""
    marker = tmp_path / "popen-ran"
    good = torchshelf.models.export_model(imported["tags"]["importable"], tmp_path / "good.shelf")
    evil_class = {
        **evil_class,
        "init_kwargs": {
            k: [str(marker) if a == "MARKER" else a for a in v]
            for k, v in evil_class["init_kwargs"].items()
        },
    }

    def edit(m: dict) -> None:
        m["version"] = "evil"
        m["structure"]["class"] = evil_class

    members = [(i, d) for i, d in read_members(good)]
    members = rewrite_manifest(members, edit)
    for info, _ in members:
        info.name = info.name.replace(f"/{imported['tags']['importable'].version}/", "/evil/")
    archive = write_tar(tmp_path / "evil.shelf", members)
    ref = torchshelf.models.import_model(archive)
    with pytest.raises(torchshelf.FormatError):
        ref.load_model()
    assert not marker.exists()
