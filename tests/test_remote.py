"""The remote store against a real S3 server (moto, on 127.0.0.1) through s3fs and botocore.

Every test gets its own bucket; `shelf` runs as a real process where concurrency or a kill is
the point. Nothing leaves the loopback interface.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from s3_processes import AWS_ENV, threaded_moto  # noqa: E402

from torchshelf import AlreadyExists, IntegrityError, NotFound, RemoteError  # noqa: E402
from torchshelf.manifest import Manifest, hash_file  # noqa: E402
from torchshelf.remote import Remote  # noqa: E402
from torchshelf.store import Store, now_iso  # noqa: E402


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with threaded_moto() as url:
        yield url


@pytest.fixture
def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"shelf-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def url(bucket: str) -> str:
    return f"s3://{bucket}/team"


@pytest.fixture
def env(tmp_path: Path, endpoint: str, url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a machine whose store is tmp/a and whose remote is `url`."""
    values = {
        **AWS_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "TORCHSHELF_REMOTE": url,
        "TORCHSHELF_HOME": str(tmp_path / "a"),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return {**os.environ, **values}


def make_version(
    store: Store,
    name: str,
    version: str,
    files: dict[str, bytes],
    labels: dict[str, str] | None = None,
) -> Manifest:
    """A committed version holding exactly `files` (the bytes matter here, not torch)."""
    staging = store.stage()
    records = {}
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
        records[rel] = hash_file(staging / rel)
    manifest = Manifest(
        name=name,
        version=version,
        creation_time=now_iso(),
        format="safetensors",
        torch_version="0",
        module_class=None,
        files=records,
        labels=dict(labels or {}),
    )
    return store.commit(staging, manifest, auto_version=False)


def files_of(size: int = 4096) -> dict[str, bytes]:
    return {
        "weights.safetensors": os.urandom(size),
        "structure.pkl": os.urandom(64),
        "custom_objects/0.json": b'{"vocab": 3}',
        "custom_objects/1.json": b"",
    }


def shelf(
    *args: str,
    env: dict[str, str],
    home: Path | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    run_env = dict(env)
    if home is not None:
        run_env["TORCHSHELF_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "torchshelf", *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def remote_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


# --- push, pull, list, get, label -----------------------------------------------------------


def test_push_then_pull_round_trips_every_byte_and_trusts_the_copy(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    files = files_of(3 << 20)
    make_version(a, "clf", "1", files, labels={"stage": "dev"})
    remote = Remote(url, endpoint_url=env["AWS_ENDPOINT_URL"])

    pushed = remote.push(a, "clf:1")
    pulled = remote.pull(b, "clf")

    assert (pushed.status, pulled.status) == ("pushed", "pulled")
    assert str(pulled.tag) == "clf:1"
    vdir = b.version_dir("clf", "1")
    assert {rel: (vdir / rel).read_bytes() for rel in files} == files
    assert b.read_manifest("clf", "1").labels == {"stage": "dev"}
    assert b.is_trusted("clf", "1")
    assert b.origin("clf", "1")["remote"] == url
    assert not list((tmp_path / "b" / ".tmp").iterdir())


@pytest.mark.slow
def test_cli_push_list_by_label_get_label_and_pull(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    make_version(Store(tmp_path / "a"), "clf", "1", files_of(), labels={"stage": "dev"})
    make_version(Store(tmp_path / "a"), "clf", "2", files_of(), labels={"stage": "dev"})

    assert shelf("push", "clf:1", "clf:2", env=env).stdout.split() == ["clf:1", "clf:2"]

    listed = json.loads(shelf("list", "--remote", "--output", "json", env=env).stdout)
    assert [m["tag"] for m in listed] == ["clf:2", "clf:1"]
    assert listed[0]["path"] == f"{url}/models/clf/2"
    assert (
        shelf("list", "--remote", url, "clf", "--latest", "-o", "tags", env=env).stdout == "clf:2\n"
    )
    # a bare --remote followed by a name: the name is the NAME argument, not a URL
    assert shelf("list", "--remote", "clf", "-o", "tags", env=env).stdout == "clf:2\nclf:1\n"

    shelf("label", "clf:1", "stage=production", "--remote", env=env)
    assert (
        shelf("list", "--remote", "-l", "stage=production", "-o", "tags", env=env).stdout
        == "clf:1\n"
    )
    got = json.loads(shelf("get", "--remote", "clf:1", "-o", "json", env=env).stdout)
    assert got["labels"] == {"stage": "production"}
    assert "stage" in shelf("get", "clf", "--remote", env=env).stdout
    # the local copy is untouched by a remote label
    assert Store(tmp_path / "a").read_manifest("clf", "1").labels == {"stage": "dev"}

    # machine B: CI pulls whatever is in production
    tag = shelf(
        "list", "--remote", "-l", "stage=production", "--latest", "-o", "tags", env=env
    ).stdout.strip()
    out = shelf("pull", tag, env=env, home=tmp_path / "b")
    assert out.stdout == "clf:1\n"
    local = json.loads(shelf("list", "-o", "json", env=env, home=tmp_path / "b").stdout)
    assert [(m["tag"], m["labels"], m["trusted"]) for m in local] == [
        ("clf:1", {"stage": "production"}, True)
    ]


def test_pull_of_a_specific_version_and_of_latest(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    for v in ("1", "2", "3"):
        make_version(a, "clf", v, files_of())
    remote = Remote(url)
    for v in ("1", "2", "3"):
        remote.push(a, f"clf:{v}")

    assert str(remote.pull(b, "clf:2").tag) == "clf:2"
    assert [m.version for m in b.list("clf")] == ["2"]
    assert str(remote.pull(b, "clf:latest").tag) == "clf:3"
    assert [m.version for m in b.list("clf")] == ["3", "2"]
    with pytest.raises(NotFound):
        remote.pull(b, "clf:9")
    assert shelf("pull", "clf:9", env=env, home=tmp_path / "b", check=False).returncode == 1


def test_pushing_the_same_version_twice_is_a_no_op(
    tmp_path: Path, env: dict[str, str], url: str, s3: Any, bucket: str
) -> None:
    make_version(Store(tmp_path / "a"), "clf", "1", files_of())
    shelf("push", "clf:1", env=env)
    before = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}

    again = shelf("push", "clf", env=env)

    assert again.stdout == "clf:1\n" and "nothing to do" in again.stderr
    after = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == before
    assert Remote(url).push(Store(tmp_path / "a"), "clf:1").status == "unchanged"


def test_a_conflicting_push_is_refused_and_the_remote_keeps_the_first(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    first = files_of()
    make_version(Store(tmp_path / "a"), "clf", "1", first)
    make_version(Store(tmp_path / "b"), "clf", "1", files_of())
    shelf("push", "clf:1", env=env)

    refused = shelf("push", "clf:1", env=env, home=tmp_path / "b", check=False)

    assert refused.returncode == 1
    assert "already exists" in refused.stderr and "different files" in refused.stderr
    with pytest.raises(AlreadyExists):
        Remote(url).push(Store(tmp_path / "b"), "clf:1")
    c = Store(tmp_path / "c")
    Remote(url).pull(c, "clf:1")
    assert (c.version_dir("clf", "1") / "weights.safetensors").read_bytes() == first[
        "weights.safetensors"
    ]


def test_pull_refuses_a_version_that_exists_locally_with_other_files(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    make_version(Store(tmp_path / "a"), "clf", "1", files_of())
    make_version(Store(tmp_path / "b"), "clf", "1", files_of())
    Remote(url).push(Store(tmp_path / "a"), "clf:1")
    with pytest.raises(AlreadyExists):
        Remote(url).pull(Store(tmp_path / "b"), "clf:1")
    assert Remote(url).pull(Store(tmp_path / "a"), "clf:1").status == "unchanged"


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_push_is_invisible_and_a_retry_completes_it(
    tmp_path: Path, env: dict[str, str], url: str, s3: Any, bucket: str
) -> None:
    # 160 MiB: over s3fs's 2 x 50 MiB threshold, so the weights go up as a multipart upload
    big = {"weights.safetensors": os.urandom(160 << 20), "structure.pkl": b"x" * 100}
    make_version(Store(tmp_path / "a"), "big", "1", big)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchshelf", "push", "big:1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60

    def mid_transfer() -> bool:  # the small file is complete and the big one is going up in parts
        return "team/models/big/1/structure.pkl" in remote_keys(s3, bucket) and bool(
            s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        )

    while not mid_transfer():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the push never started a multipart upload"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-transfer: parts are in flight, no manifest yet
    proc.wait()
    if "team/models/big/1/manifest.json" in remote_keys(s3, bucket):
        pytest.skip("the push finished before it could be killed")

    remote = Remote(url)
    assert remote.list() == []
    with pytest.raises(NotFound):
        remote.get("big")
    gone = shelf("pull", "big:1", env=env, home=tmp_path / "b", check=False)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert not (tmp_path / "b" / "models" / "big").exists()
    assert remote.leftovers() == [f"{url}/models/big/1"]

    shelf("gc", "--remote", env=env)  # too recent to remove: the push might still be running
    assert remote.leftovers() == [f"{url}/models/big/1"]

    shelf("push", "big:1", env=env)  # the retry reuses what the killed push completed
    assert [str(m.tag) for m in remote.list()] == ["big:1"]
    assert remote.leftovers() == []
    remote.pull(Store(tmp_path / "b"), "big:1")
    assert (tmp_path / "b" / "models" / "big" / "1" / "weights.safetensors").read_bytes() == big[
        "weights.safetensors"
    ]


@pytest.mark.parametrize("ranged", [False, True], ids=["one GET", "ranged GETs"])
@pytest.mark.parametrize("damage", ["same size", "truncated", "longer"])
def test_pull_refuses_a_corrupted_remote_object(
    tmp_path: Path,
    env: dict[str, str],
    url: str,
    s3: Any,
    bucket: str,
    damage: str,
    ranged: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if ranged:  # large files are fetched in ordered ranges: make 1 MiB count as large
        monkeypatch.setattr("torchshelf.remote.RANGE_CHUNK", 256 << 10)
    files = files_of(1 << 20)
    make_version(Store(tmp_path / "a"), "clf", "1", files)
    Remote(url).push(Store(tmp_path / "a"), "clf:1")
    bad = bytearray(files["weights.safetensors"])
    if damage == "same size":
        bad[len(bad) // 2] ^= 0xFF
    elif damage == "truncated":
        del bad[-10:]
    else:
        bad += b"tail"
    s3.put_object(Bucket=bucket, Key="team/models/clf/1/weights.safetensors", Body=bytes(bad))

    b = Store(tmp_path / "b")
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        Remote(url).pull(b, "clf:1")
    assert b.list() == []
    assert not list((tmp_path / "b" / ".tmp").iterdir())
    if ranged:
        return
    refused = shelf("pull", "clf", env=env, home=tmp_path / "b", check=False)
    assert refused.returncode == 1 and "corrupt" in refused.stderr


def test_missing_remote_configuration_and_bad_urls_say_what_to_do(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_remote = {k: v for k, v in env.items() if k != "TORCHSHELF_REMOTE"}
    out = shelf("list", "--remote", env=no_remote, check=False)
    assert out.returncode == 1 and "TORCHSHELF_REMOTE" in out.stderr
    out = shelf("push", "clf", "--remote", "http://example.invalid/x", env=env, check=False)
    assert out.returncode == 2 and "s3://" in out.stderr
    missing = shelf("list", "--remote", "s3://no-such-bucket-here", env=env, check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_without_s3fs_the_error_names_the_extra(
    env: dict[str, str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(RemoteError, match=r"torchshelf\[s3\]"):
        Remote(url).list()


def test_remote_config_from_shelf_toml(
    tmp_path: Path, env: dict[str, str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHSHELF_REMOTE")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    (tmp_path / "shelf.toml").write_text(
        f'[remote]\nurl = "{url}"\nendpoint_url = "{env["AWS_ENDPOINT_URL"]}"\n'
    )
    make_version(Store(tmp_path / "a"), "clf", "1", files_of())
    import torchshelf

    assert [t.status for t in torchshelf.models.push("clf:1")] == ["pushed"]
    assert [str(m.tag) for m in torchshelf.Remote.from_config().list()] == ["clf:1"]


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_push_different_versions_of_one_name_at_once(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    a = Store(tmp_path / "a")
    make_version(a, "clf", "1", files_of(8 << 20))
    make_version(a, "clf", "2", files_of(8 << 20))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "push", f"clf:{v}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("1", "2")
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results

    remote = Remote(url)
    assert [str(m.tag) for m in remote.list()] == ["clf:2", "clf:1"]
    assert str(remote.get("clf").tag) == "clf:2"
    for v in ("1", "2"):
        remote.pull(Store(tmp_path / "b"), f"clf:{v}")


@pytest.mark.slow
def test_two_writers_of_one_version_cannot_both_win(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    contents = {}
    for who in ("a", "b"):
        contents[who] = {
            **files_of(),
            **{f"custom_objects/{i}.json": os.urandom(256) for i in range(8)},
        }
        make_version(Store(tmp_path / who), "clf", "1", contents[who])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "push", "clf:1"],
            env={**env, "TORCHSHELF_HOME": str(tmp_path / who)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        codes.append(p.returncode)
        assert p.returncode == 0 or "already exists" in err, err
    assert codes.count(0) <= 1, "both writers of clf:1 won"

    remote = Remote(url)
    if codes.count(0) == 1:  # the winner's bytes, every one of them verified by the pull
        winner = "ab"[codes.index(0)]
        c = Store(tmp_path / "c")
        remote.pull(c, "clf:1")
        vdir = c.version_dir("clf", "1")
        assert {rel: (vdir / rel).read_bytes() for rel in contents[winner]} == contents[winner]
    else:  # both refused each other's objects: nothing is visible, the leftovers are listed
        assert remote.list() == []
        assert remote.leftovers() == [f"{url}/models/clf/1"]


@pytest.mark.slow
def test_concurrent_label_changes_are_not_lost(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    make_version(Store(tmp_path / "a"), "clf", "1", files_of(), labels={"owner": "ml"})
    Remote(url).push(Store(tmp_path / "a"), "clf:1")

    def label(i: int) -> None:
        Remote(url).set_labels("clf:1", {f"k{i}": str(i)})

    threads = [threading.Thread(target=label, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    labels = Remote(url).get("clf:1").labels
    assert labels == {"owner": "ml", **{f"k{i}": str(i) for i in range(6)}}
    assert Remote(url).set_labels("clf:1", {}, remove=["owner"]).labels.get("owner") is None


# --- load_model(remote=...) ---------------------------------------------------------------------


def test_load_model_pulls_into_the_local_cache_on_first_use(
    tmp_path: Path, env: dict[str, str], url: str
) -> None:
    torch = pytest.importorskip("torch")
    import torchshelf

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    tag = torchshelf.save_model("tiny", model, store=tmp_path / "a")
    torchshelf.models.push(tag, store=tmp_path / "a")

    cache = tmp_path / "cache"
    loaded = torchshelf.load_model(str(tag), remote=url, store=cache)
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    assert Store(cache).is_trusted(tag.name, tag.version)
    # pinned and cached: no network needed, even with an unreachable remote
    again = torchshelf.load_model(str(tag), remote="s3://no-such-bucket-here", store=cache)
    assert torch.equal(again(x), model(x))


def test_optional_remote_value_parsing() -> None:
    from torchshelf.cli.remote_cmds import optional_remote_value as norm

    assert norm(["--remote"]) == ["--remote="]
    assert norm(["--remote", "clf", "-o", "json"]) == ["--remote=", "clf", "-o", "json"]
    assert norm(["--remote", "s3://b/p", "clf"]) == ["--remote", "s3://b/p", "clf"]
    assert norm(["clf", "--remote", "--latest"]) == ["clf", "--remote=", "--latest"]
    assert norm(["--remote=s3://b", "--", "--remote"]) == ["--remote=s3://b", "--", "--remote"]


def test_gc_remote_removes_only_old_leftovers(
    tmp_path: Path, env: dict[str, str], url: str, s3: Any, bucket: str
) -> None:
    make_version(Store(tmp_path / "a"), "clf", "1", files_of())
    remote = Remote(url)
    remote.push(Store(tmp_path / "a"), "clf:1")
    s3.put_object(Bucket=bucket, Key="team/models/clf/2/weights.safetensors", Body=b"half a push")
    s3.create_multipart_upload(Bucket=bucket, Key="team/models/clf/3/weights.safetensors")

    # Younger than a day: may be a push under way, so it stays. (moto dates every multipart
    # upload 2010-11-10, so the incomplete upload counts as old even here.)
    first = remote.gc()
    assert first.removed == (
        f"s3://{bucket}/team/models/clf/3/weights.safetensors (incomplete upload)",
    )
    assert remote.leftovers() == [f"{url}/models/clf/2"]
    report = remote.gc(older_than=0)

    assert report.removed == (f"{url}/models/clf/2",)
    assert report.bytes_freed == len(b"half a push")
    assert remote.leftovers() == [] and not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert [str(m.tag) for m in remote.list()] == ["clf:1"]
    out = shelf("gc", "--remote", "--older-than", "0", env=env)
    assert "freed 0 B" in out.stdout
