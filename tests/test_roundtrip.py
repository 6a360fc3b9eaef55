"""Models, and everything stored beside them, come back exactly as they were saved."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import zoo
from conftest import run_python

import torchshelf


def test_importable_class_round_trips_bit_identical(store_home: Path) -> None:
    torch.manual_seed(0)
    model = zoo.MLP().eval()
    x = torch.randn(5, 8)
    tag = torchshelf.save_model("mlp", model)
    loaded = torchshelf.load_model(tag)
    assert type(loaded) is zoo.MLP
    assert not loaded.training
    assert torch.equal(loaded(x), model(x))
    ref = torchshelf.get(tag)
    assert ref.manifest.structure["class"] == {"class": "zoo:MLP", "init_kwargs": {}}
    assert ref.info.module_class == "zoo:MLP"


def test_torch_nn_transformer_round_trips_bit_identical(store_home: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Transformer(
        d_model=16,
        nhead=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=32,
        dropout=0.0,
        batch_first=True,
    ).eval()
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    tag = torchshelf.save_model("transformer", model)
    loaded = torchshelf.load_model(tag)
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt), model(src, tgt))


def test_gpt_with_tied_embedding_loads_with_the_tie_intact(store_home: Path) -> None:
    torch.manual_seed(0)
    model = zoo.TinyGPT().eval()
    idx = torch.randint(0, 64, (3, 12))
    tag = torchshelf.save_model("gpt", model)
    ref = torchshelf.get(tag)
    assert ref.manifest.structure["aliases"] == {"head.weight": "emb.weight"}
    loaded = torchshelf.load_model(tag)
    assert loaded.head.weight is loaded.emb.weight
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    # One tensor on disk, not two.
    from safetensors import safe_open

    with safe_open(str(ref.path / "weights.safetensors"), "pt") as fh:
        assert "head.weight" not in fh.keys()  # noqa: SIM118


def test_gpt_tie_survives_the_pickle_form_too(store_home: Path) -> None:
    torch.manual_seed(0)
    model = zoo.TinyGPT(dim=24).eval()  # not the default kwargs: only the pickle form rebuilds it
    tag = torchshelf.save_model("gpt", model)
    assert torchshelf.get(tag).manifest.structure["class"] is None
    loaded = torchshelf.load_model(tag)
    assert loaded.head.weight is loaded.emb.weight
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


def test_init_kwargs_give_the_class_form_for_non_default_constructors(store_home: Path) -> None:
    model = zoo.TinyGPT(dim=24).eval()
    tag = torchshelf.save_model("gpt", model, init_kwargs={"dim": 24})
    assert torchshelf.get(tag).manifest.structure["class"]["init_kwargs"] == {"dim": 24}
    with pytest.raises(torchshelf.FormatError):
        torchshelf.save_model("gpt", model, init_kwargs={"dim": 32})


def test_scriptmodule_round_trips_as_torchscript(store_home: Path) -> None:
    torch.manual_seed(0)
    eager = zoo.MLP().eval()
    scripted = torch.jit.script(eager)
    x = torch.randn(4, 8)
    tag = torchshelf.save_model("scripted", scripted)
    ref = torchshelf.get(tag)
    assert ref.manifest.format == "torchscript"
    assert set(ref.manifest.files) == {"model.ts"}
    loaded = torchshelf.load_model(tag)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert torch.equal(loaded(x), eager(x))


def test_class_defined_in_a_users_main_script_loads_in_another_process(
    store_home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent("""
        import torch, torchshelf

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(6, 3)
                self.lin2 = torch.nn.Linear(3, 2)

            def forward(self, x):
                return self.lin2(torch.relu(self.lin(x))) + 1

        if __name__ == "__main__":
            torch.manual_seed(1)
            net = Net().eval()
            x = torch.arange(12.0).reshape(2, 6)
            tag = torchshelf.save_model("scripted-user", net)
            torch.save(net(x).detach(), "expected.pt")
            print(tag)
    """)
    )
    import subprocess
    import sys

    from conftest import child_env

    saved = subprocess.run(
        [sys.executable, str(script)],
        env=child_env(store_home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    tag = saved.stdout.strip()
    other = tmp_path / "elsewhere"
    other.mkdir()
    loaded = run_python(
        textwrap.dedent(f"""
        import torch, torchshelf
        model = torchshelf.load_model({tag!r})
        x = torch.arange(12.0).reshape(2, 6)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(model(x), expected), (model(x), expected)
        assert not model.training
        print(type(model).__name__)
    """),
        store=store_home,
        cwd=other,
    )
    assert loaded.stdout.strip() == "Net"


def test_weights_never_enter_the_structure_pickle(store_home: Path) -> None:
    model = zoo.Big(n=1, dim=256)
    tag = torchshelf.save_model("big", model)
    ref = torchshelf.get(tag)
    assert ref.manifest.files["structure.pkl"]["size"] < 64 * 1024
    assert ref.manifest.files["weights.safetensors"]["size"] >= 256 * 256 * 4


def test_labels_metadata_and_signatures_round_trip(store_home: Path) -> None:
    sigs = {
        "predict": {
            "batchable": True,
            "batch_dim": 0,
            "input_spec": {"shape": [-1, 8], "dtype": "float32"},
        },
        "__call__": {"batchable": False},
    }
    meta = {"accuracy": 0.93, "epochs": 3, "notes": ["a", "b"], "nested": {"k": None}}
    tag = torchshelf.save_model(
        "mlp", zoo.MLP(), labels={"stage": "dev", "team": "vision"}, metadata=meta, signatures=sigs
    )
    ref = torchshelf.get(tag)
    assert ref.labels == {"stage": "dev", "team": "vision"}
    assert ref.metadata == meta
    assert ref.signatures["predict"] == sigs["predict"]
    assert ref.signatures["__call__"] == {"batchable": False, "batch_dim": 0}
    assert ref.info.labels == ref.labels and ref.info.tag == tag
    raw = json.loads((ref.path / "manifest.json").read_text())
    for key in (
        "name",
        "version",
        "creation_time",
        "format",
        "labels",
        "metadata",
        "signatures",
        "torch_version",
        "module_class",
        "files",
    ):
        assert key in raw
    assert raw["torch_version"] == torch.__version__
    assert ref.creation_time.tzinfo is not None


def test_set_labels_adds_overwrites_and_removes(store_home: Path) -> None:
    tag = torchshelf.save_model("mlp", zoo.MLP(), labels={"stage": "dev", "old": "1"})
    torchshelf.models.set_labels(tag, {"stage": "production", "owner": "me"}, remove=["old"])
    assert torchshelf.get(tag).labels == {"stage": "production", "owner": "me"}
    torchshelf.models.verify([tag])  # relabelling does not break integrity
    assert torchshelf.models.verify([tag])[0][1] is None


class Tokenizer:
    """A custom object that can only be pickled."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.table = torch.arange(5)

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(w, 0) for w in text.split()]


def test_custom_objects_round_trip_json_tensor_nested_and_pickled(store_home: Path) -> None:
    objects = {
        "config": {"labels": ["cat", "dog"], "threshold": 0.5, "n": 3, "ok": True, "none": None},
        "mean": torch.tensor([0.485, 0.456, 0.406]),
        "stats": {"mean": torch.ones(3), "std": [torch.zeros(2, dtype=torch.float16)], "k": "v"},
        "tokenizer": Tokenizer({"hello": 1, "world": 2}),
        "text": "plain string",
    }
    tag = torchshelf.save_model("mlp", zoo.MLP(), custom_objects=objects)
    ref = torchshelf.get(tag)
    kinds = {k: v["kind"] for k, v in ref.manifest.custom_objects.items()}
    assert kinds == {
        "config": "json",
        "mean": "tensors",
        "stats": "tensors",
        "tokenizer": "pickle",
        "text": "json",
    }
    for rec in ref.manifest.custom_objects.values():
        assert rec["file"] in ref.manifest.files  # listed with its sha256
    fresh = torchshelf.get(tag).custom_objects
    assert fresh["config"] == objects["config"]
    assert torch.equal(fresh["mean"], objects["mean"])
    assert torch.equal(fresh["stats"]["mean"], torch.ones(3))
    assert fresh["stats"]["std"][0].dtype == torch.float16
    assert fresh["stats"]["k"] == "v"
    assert fresh["tokenizer"].encode("hello world x") == [1, 2, 0]
    assert torch.equal(fresh["tokenizer"].table, torch.arange(5))
    assert fresh["text"] == "plain string"
    assert set(fresh) == set(objects)


def test_latest_and_explicit_versions_resolve(store_home: Path) -> None:
    a = torchshelf.save_model("mlp", zoo.MLP(), version="v1")
    b = torchshelf.save_model("mlp", zoo.MLP())
    c = torchshelf.save_model("mlp", zoo.MLP())
    assert str(a) == "mlp:v1"
    assert torchshelf.get("mlp").tag == c
    assert torchshelf.get("mlp:latest").tag == c
    assert torchshelf.get("MLP:latest").tag == c  # names are case-folded
    assert torchshelf.get("mlp:v1").tag == a
    assert torchshelf.get(str(b)).tag == b
    assert torchshelf.get(b).tag == b
    assert [m.tag for m in torchshelf.models.list("mlp")] == [c, b, a]
    with pytest.raises(torchshelf.AlreadyExists):
        torchshelf.save_model("mlp", zoo.MLP(), version="v1")
    with pytest.raises(torchshelf.NotFound):
        torchshelf.get("mlp:v2")
    with pytest.raises(torchshelf.NotFound):
        torchshelf.load_model("nothing")


def test_auto_versions_sort_by_creation_time(store_home: Path) -> None:
    tags = [torchshelf.save_model("mlp", zoo.MLP()) for _ in range(5)]
    assert sorted(t.version for t in tags) == [t.version for t in tags]
    assert len({t.version for t in tags}) == 5


def test_label_selectors_filter(store_home: Path) -> None:
    prod = torchshelf.save_model("a", zoo.MLP(), labels={"stage": "production", "team": "x"})
    dev = torchshelf.save_model("a", zoo.MLP(), labels={"stage": "dev"})
    bare = torchshelf.save_model("b", zoo.MLP())
    staging = torchshelf.save_model("b", zoo.MLP(), labels={"stage": "staging", "team": "y"})

    def tags(*sels: str) -> set[torchshelf.Tag]:
        return {m.tag for m in torchshelf.models.list(labels=list(sels))}

    assert tags("stage=production") == {prod}
    assert tags("stage!=production") == {dev, bare, staging}
    assert tags("team") == {prod, staging}
    assert tags("!team") == {dev, bare}
    assert tags("stage in (dev, staging)") == {dev, staging}
    assert tags("stage notin (dev,staging)") == {prod, bare}
    assert tags("stage in (dev,staging,production)", "team") == {prod, staging}
    assert {m.tag for m in torchshelf.models.list(labels={"stage": "dev"})} == {dev}
    assert {m.tag for m in torchshelf.models.list("b", ["team=y"])} == {staging}
    assert [m.tag for m in torchshelf.models.list(latest=True)] == [staging, dev]
    with pytest.raises(torchshelf.UsageError):
        torchshelf.models.list(labels=["stage in dev"])


def test_load_model_to_an_unavailable_device_names_what_exists(store_home: Path) -> None:
    tag = torchshelf.save_model("mlp", zoo.MLP())
    with pytest.raises(torchshelf.DeviceError, match="cpu"):
        torchshelf.load_model(tag, device_id="cuda:7")
    with pytest.raises(torchshelf.DeviceError):
        torchshelf.load_model(tag, device_id="tpu")


def test_pytorch_alias_is_the_same_api(store_home: Path) -> None:
    from torchshelf import pytorch

    tag = pytorch.save_model("mlp", zoo.MLP())
    assert pytorch.get(tag).tag == tag
    assert isinstance(pytorch.load_model("mlp:latest"), zoo.MLP)


def test_model_reference_loads_and_deletes(store_home: Path) -> None:
    tag = torchshelf.save_model("mlp", zoo.MLP())
    ref = torchshelf.models.get(tag)
    assert isinstance(ref.load_model(), zoo.MLP)
    assert torchshelf.models.delete(tag) == [tag]
    assert not ref.path.exists()
    with pytest.raises(torchshelf.NotFound):
        torchshelf.get("mlp")
