"""The `shelf` command line: sources, output formats, exit codes, names, labels, delete, gc, config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import zoo
from conftest import Shelf, outside_files, run_shelf

import torchshelf

BAD_NAMES = ["../x", "A B", "", " ", "x/y", ".hidden", "a..b", "-x", "x-", "a" * 65, "x\0y", "é"]
BAD_VERSIONS = ["../v", "latest", ".v", "v/1", "v 1", "", "v" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_rejected_by_the_api(store_home: Path, name: str) -> None:
    with pytest.raises(torchshelf.InvalidName):
        torchshelf.save_model(name, zoo.MLP())
    with pytest.raises(torchshelf.InvalidName):
        torchshelf.get(name)
    with pytest.raises(torchshelf.InvalidName):
        torchshelf.models.delete(f"{name}:v1")
    assert not store_home.exists() or not list((store_home / "models").glob("*"))
    assert outside_files(store_home.parent, store_home) == set()


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_invalid_versions_are_rejected_by_the_api(store_home: Path, version: str) -> None:
    with pytest.raises(torchshelf.InvalidName):
        torchshelf.save_model("ok", zoo.MLP(), version=version)
    if version and version != "latest":  # `ok:latest` is valid: it means the newest
        with pytest.raises(torchshelf.InvalidName):
            torchshelf.get(f"ok:{version}")
    assert not list(store_home.glob("models/*/*"))


@pytest.mark.parametrize(
    "args",
    [
        ["get", "../x"],
        ["get", "A B"],
        ["get", ""],
        ["get", "ok:../v"],
        ["list", "../x"],
        ["delete", "--yes", "../x"],
        ["label", "../x", "k=v"],
        ["save", "A B", "zoo:make_mlp"],
        ["save", "", "zoo:make_mlp"],
        ["save", "ok", "zoo:make_mlp", "--version", "../v"],
        ["export", "../x", "out.shelf"],
    ],
    ids=lambda a: " ".join(a) or "empty",
)
def test_invalid_names_exit_2_on_the_cli(shelf: Shelf, args: list[str]) -> None:
    proc = shelf(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "invalid" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_save_accepts_module_attr_file_attr_torchscript_and_safetensors(
    store_home: Path, shelf: Shelf, tmp_path: Path
) -> None:
    # package.module:factory
    proc = shelf(
        "save",
        "a",
        "zoo:make_mlp",
        "--label",
        "stage=dev",
        "--metadata",
        "acc=0.9",
        "--signature",
        "__call__:batchable,batch_dim=0,shape=-1x8",
    )
    assert proc.returncode == 0, proc.stderr
    tag = proc.stdout.strip()
    assert tag.startswith("a:") and "\n" not in tag  # the tag alone on stdout
    ref = torchshelf.get(tag)
    assert ref.labels == {"stage": "dev"} and ref.metadata == {"acc": 0.9}
    assert ref.signatures["__call__"] == {
        "batchable": True,
        "batch_dim": 0,
        "input_spec": {"shape": [-1, 8], "dtype": "float32"},
    }
    assert type(torchshelf.load_model(tag)) is zoo.MLP

    # path/to/file.py:attr with a class defined in that file (stored by value)
    script = tmp_path / "mymodel.py"
    script.write_text(
        textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 3)
            def forward(self, x):
                return self.lin(x) * 2
        torch.manual_seed(3)
        model = Net()
    """)
    )
    proc = shelf("save", "b", f"{script}:model")
    assert proc.returncode == 0, proc.stderr
    script.unlink()  # loading must not need the file any more
    loaded = torchshelf.load_model(proc.stdout.strip())
    torch.manual_seed(3)
    lin = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), lin(x) * 2)

    # a TorchScript file
    ts = tmp_path / "model.pt"
    torch.jit.script(zoo.make_mlp()).save(str(ts))
    proc = shelf("save", "c", str(ts), "--version", "1.0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "c:1.0"
    assert torchshelf.get("c:1.0").manifest.format == "torchscript"

    # a .safetensors file with --class and --init-json
    from safetensors.torch import save_file

    source = zoo.MLP(width=32)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    proc = shelf(
        "save",
        "d",
        str(tmp_path / "w.safetensors"),
        "--class",
        "zoo:MLP",
        "--init-json",
        '{"width": 32}',
    )
    assert proc.returncode == 0, proc.stderr
    x = torch.randn(2, 8)
    assert torch.equal(torchshelf.load_model("d")(x), source.eval()(x))
    assert torchshelf.get("d").manifest.structure["class"] == {
        "class": "zoo:MLP",
        "init_kwargs": {"width": 32},
    }


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["save", "x", "no_such_module:thing"], 2),
        (["save", "x", "missing-file.pt"], 2),
        (["save", "x", "zoo:make_mlp", "--label", "novalue"], 2),
        (["list", "--output", "yaml"], 2),
        (["list", "--label", "k in x"], 2),
        (["frobnicate"], 2),
        (["get", "nothing"], 1),
        (["get", "nothing:v1"], 1),
        (["delete", "--yes", "nothing"], 1),
        (["verify", "nothing"], 1),
        (["label", "nothing", "k=v"], 1),
        (["export", "nothing", "x.shelf"], 1),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else str(a),
)
def test_exit_codes_follow_the_contract(shelf: Shelf, args: list[str], code: int) -> None:
    proc = shelf(*args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.fixture
def three_versions(store_home: Path) -> list[torchshelf.Tag]:
    return [
        torchshelf.save_model("mlp", zoo.MLP(), labels={"stage": "dev"}),
        torchshelf.save_model(
            "mlp", zoo.MLP(), labels={"stage": "production"}, metadata={"acc": 1}
        ),
        torchshelf.save_model("gpt", zoo.TinyGPT()),
    ]


def test_list_and_get_json_parse(three_versions: list[torchshelf.Tag], shelf: Shelf) -> None:
    dev, prod, gpt = three_versions
    proc = shelf("list", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [m["tag"] for m in listed] == [str(gpt), str(prod), str(dev)]  # newest first
    assert listed[1]["labels"] == {"stage": "production"} and listed[1]["metadata"] == {"acc": 1}
    assert {"tag", "name", "version", "creation_time", "format", "size", "files"} <= set(listed[0])

    proc = shelf("get", "mlp", "--output", "json")
    got = json.loads(proc.stdout)
    assert got["tag"] == str(prod) and got["trusted"] is True
    assert got["files"]["weights.safetensors"]["size"] > 0

    assert json.loads(shelf("list", "nothing", "--output", "json").stdout) == []
    assert json.loads(shelf("list", "--latest", "-o", "json").stdout)[1]["tag"] == str(prod)
    tags = shelf("list", "mlp", "--label", "stage in (dev,qa)", "--output", "tags").stdout
    assert tags == f"{dev}\n"
    assert shelf("list", "--label", "stage!=dev", "-l", "stage", "-o", "tags").stdout == f"{prod}\n"


def test_table_output_lists_every_version(
    three_versions: list[torchshelf.Tag], shelf: Shelf
) -> None:
    proc = shelf("list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["TAG", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [str(t) for t in reversed(three_versions)]
    proc = shelf("get", str(three_versions[0]))
    assert proc.returncode == 0 and "weights.safetensors" in proc.stdout
    assert proc.stderr == ""


def test_label_and_delete(three_versions: list[torchshelf.Tag], shelf: Shelf) -> None:
    dev, prod, gpt = three_versions
    proc = shelf("label", str(dev), "stage=production", "owner=me")
    assert proc.returncode == 0, proc.stderr
    assert torchshelf.get(dev).labels == {"stage": "production", "owner": "me"}
    assert shelf("label", str(dev), "--remove", "owner").returncode == 0
    assert torchshelf.get(dev).labels == {"stage": "production"}
    assert shelf("label", str(dev)).returncode == 2  # nothing to do

    proc = shelf("delete", str(dev))  # not a terminal: no prompt
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {dev}" in proc.stderr
    assert shelf("get", str(dev)).returncode == 1
    proc = shelf("delete", "--yes", "mlp", "gpt")
    assert proc.returncode == 0
    assert json.loads(shelf("list", "-o", "json").stdout) == []


def test_gc_removes_leftovers_and_reports_what_it_freed(store_home: Path, shelf: Shelf) -> None:
    import os
    import socket

    tag = torchshelf.save_model("mlp", zoo.MLP())
    dead = store_home / ".tmp" / f"{socket.gethostname()}.999999999.def"  # a dead local writer
    dead.mkdir(parents=True)
    (dead / "weights.safetensors").write_bytes(b"y" * 500)
    foreign_old = store_home / ".tmp" / "otherhost.123.abc"  # another host's, untouched for days
    foreign_old.mkdir()
    (foreign_old / "a").write_bytes(b"x" * 1000)
    os.utime(foreign_old, (1e9, 1e9))
    foreign_new = store_home / ".tmp" / "otherhost.124.abc"  # another host's, maybe still writing
    foreign_new.mkdir()
    trash = store_home / ".trash" / "mlp.v.123"
    trash.mkdir(parents=True)
    (trash / "b").write_bytes(b"z" * 24)
    stray = torchshelf.get(tag).path / ".manifest.json.dead.tmp"
    stray.write_bytes(b"{}")
    proc = shelf("gc")
    assert proc.returncode == 0, proc.stderr
    for gone in (dead, foreign_old, trash, stray):
        assert not gone.exists()
        assert f"removed {gone.relative_to(store_home)}" in proc.stdout
    assert foreign_new.exists()
    assert "freed 1.5 KiB (1526 bytes) in 4 entries" in proc.stdout
    assert torchshelf.models.verify() == [(tag, None)]
    assert "freed 0 B (0 bytes) in 0 entries" in shelf("gc").stdout


def test_store_root_precedence_flag_env_config(tmp_path: Path, store_home: Path) -> None:
    import os
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    stores = {k: tmp_path / k for k in ("config", "env", "flag", "pyproject")}
    template = tmp_path / "template"
    torchshelf.save_model("m", zoo.MLP(), store=template)
    for key, root in stores.items():
        shutil.copytree(template, root)
        torchshelf.models.set_labels("m", {"store": key}, store=root)
    (project / "shelf.toml").write_text('store = "../config"\n')
    base = {k: v for k, v in os.environ.items() if k != "TORCHSHELF_HOME"}

    def which(*extra: str, home: Path | None = None) -> str:
        env = {**base, "TORCHSHELF_HOME": str(home)} if home else base
        proc = run_shelf(*extra, "get", "m", "-o", "json", store=store_home, env=env, cwd=project)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["labels"]["store"]

    assert which() == "config"
    assert which(home=stores["env"]) == "env"
    assert which("--store", str(stores["flag"]), home=stores["env"]) == "flag"
    (project / "shelf.toml").unlink()
    (project / "pyproject.toml").write_text('[tool.torchshelf]\nstore = "../pyproject"\n')
    assert which() == "pyproject"


def test_errors_go_to_stderr_and_data_to_stdout(store_home: Path, shelf: Shelf) -> None:
    proc = shelf("get", "nothing")
    assert proc.stdout == "" and proc.stderr.startswith("error:")
    assert "shelf list" in proc.stderr  # says what to do next
    assert len(proc.stderr.strip().splitlines()) == 1


def test_version_flag(shelf: Shelf) -> None:
    proc = shelf("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == torchshelf.__version__
