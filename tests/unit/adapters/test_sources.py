"""Sources against real components: local files, a pre-filled Hugging Face cache (offline), and a
real S3-compatible server (moto in server mode on 127.0.0.1)."""

import asyncio
import hashlib
import os
import socket
import time
from pathlib import Path

import boto3
import huggingface_hub.constants
import pytest

from adapters.disk_cache import DiskCache
from adapters.errors import (
    AdapterFetchTimeoutError,
    AdapterSourceError,
    InvalidAdapterError,
)
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec
from tests.ports import free_port
from tests.s3_server import s3_server

FILES = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"w" * 1000}


def spec(source: str, name: str = "a1", **kw) -> AdapterSpec:
    return AdapterSpec(name=name, source=source, **kw)


def fetch(fetcher: Fetcher, s: AdapterSpec) -> Path:
    return asyncio.run(fetcher.fetch(s))


# -- check ----------------------------------------------------------------------------------------


def test_check_parses_each_supported_scheme(tmp_path):
    (tmp_path / "ad").mkdir()
    f = Fetcher(allowed_roots=[tmp_path], cache_dir=tmp_path / "cache")
    assert f.check(spec(str(tmp_path / "ad"))).path == tmp_path.resolve() / "ad"
    assert f.check(spec(f"file://{tmp_path}/ad")).path == tmp_path.resolve() / "ad"
    hf = f.check(spec("hf://org/repo/loras/style", revision="v1"))
    assert (hf.kind, hf.repo_id, hf.subfolder, hf.revision) == (
        "hf",
        "org/repo",
        "loras/style",
        "v1",
    )
    assert f.check(spec("hf://org/repo@abc123")).revision == "abc123"
    s3 = f.check(spec("s3://my-bucket/team/adapter-1/"))
    assert (s3.kind, s3.bucket, s3.prefix) == ("s3", "my-bucket", "team/adapter-1")


@pytest.mark.parametrize(
    "source, message",
    [
        ("hf://org/repo@v1", "conflicts with '@v1'"),
        ("hf://datasets/org/data", "must be model repositories"),
        ("hf://org/repo/.hidden", "must be plain names"),
        ("s3://bucket//etc/passwd", "plain names separated by single '/'"),
        ("s3:///bucket/x", "cannot be absolute paths"),
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("C:\\adapters\\x", "backslashes"),
    ],
)
def test_check_refuses_tricks(tmp_path, source, message):
    f = Fetcher(allowed_roots=[tmp_path], cache_dir=tmp_path / "cache")
    with pytest.raises(AdapterSourceError, match="adapter 'a1': invalid source") as info:
        f.check(spec(source, revision="v2" if "@" in source else None))
    assert message in str(info.value)


def test_local_sources_need_a_configured_root(tmp_path):
    f = Fetcher(cache_dir=tmp_path / "cache")
    with pytest.raises(AdapterSourceError, match="no allowed_roots configured"):
        f.check(spec(str(tmp_path)))


def test_revision_is_for_the_hub_only(tmp_path):
    f = Fetcher(allowed_roots=[tmp_path], cache_dir=tmp_path / "cache")
    with pytest.raises(AdapterSourceError, match="'revision' applies to hf:// sources only"):
        f.check(spec("s3://bucket/x", revision="v1"))


# -- local ----------------------------------------------------------------------------------------


def test_local_adapter_is_used_in_place_through_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "ad").mkdir(parents=True)
    for name, data in FILES.items():
        (real / "ad" / name).write_bytes(data)
    (tmp_path / "link").symlink_to(real)
    f = Fetcher(allowed_roots=[tmp_path / "link"], cache_dir=tmp_path / "cache")
    assert fetch(f, spec(str(tmp_path / "link" / "ad"))) == real / "ad"


def test_local_errors_name_the_adapter_and_what_is_missing(tmp_path):
    (tmp_path / "ad").mkdir()
    (tmp_path / "file.safetensors").write_bytes(b"x")
    f = Fetcher(allowed_roots=[tmp_path], cache_dir=tmp_path / "cache")
    with pytest.raises(AdapterSourceError, match="adapter 'a1': source path .* does not exist"):
        fetch(f, spec(str(tmp_path / "nope")))
    with pytest.raises(AdapterSourceError, match="is a file; give its directory as source"):
        fetch(f, spec(str(tmp_path / "file.safetensors")))
    with pytest.raises(AdapterSourceError, match="has no file 'style.safetensors'"):
        fetch(f, spec(str(tmp_path / "ad"), kind="image", weight_name="style.safetensors"))


# -- Hugging Face Hub, offline, through its real cache --------------------------------------------


def fill_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], refs: dict[str, str]):
    """Lay files out the way huggingface_hub does: blobs by hash, snapshots/<commit> symlinks,
    refs/<name> holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit in set(refs.values()):
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, commit in refs.items():
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these at import: point its constants at them too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_adapter_from_the_prefilled_cache_with_subfolder_and_revision(tmp_path, offline_hub):
    main, v1 = "a" * 40, "b" * 40
    files = {f"loras/style/{n}": d for n, d in FILES.items()} | {"README.md": b"hi"}
    fill_hub_cache(offline_hub, "test-org/loras", files, {"main": main, "v1": v1})
    f = Fetcher(cache_dir=tmp_path / "cache")
    path = fetch(f, spec("hf://test-org/loras/loras/style"))
    assert path == offline_hub / "models--test-org--loras" / "snapshots" / main / "loras/style"
    assert (path / "adapter_model.safetensors").read_bytes() == FILES["adapter_model.safetensors"]
    assert v1 in str(fetch(f, spec("hf://test-org/loras/loras/style", revision="v1")))
    assert v1 in str(fetch(f, spec("hf://test-org/loras@v1/loras/style")))


def test_hub_image_lora_by_weight_name(tmp_path, offline_hub):
    fill_hub_cache(
        offline_hub, "test-org/sd-lora", {"pixel.safetensors": b"p" * 10}, {"main": "c" * 40}
    )
    f = Fetcher(cache_dir=tmp_path / "cache")
    path = fetch(f, spec("hf://test-org/sd-lora", kind="image", weight_name="pixel.safetensors"))
    assert (path / "pixel.safetensors").read_bytes() == b"p" * 10
    with pytest.raises(AdapterSourceError, match="hf://test-org/sd-lora has no other.safetensors"):
        fetch(f, spec("hf://test-org/sd-lora", kind="image", weight_name="other.safetensors"))


def test_hub_adapter_not_in_cache_while_offline_is_a_clear_error(tmp_path, offline_hub):
    f = Fetcher(cache_dir=tmp_path / "cache", retries=3, backoff_s=0)
    with pytest.raises(
        AdapterSourceError, match="adapter 'a1': hf://test-org/absent: not in the local"
    ):
        fetch(f, spec("hf://test-org/absent"))


# -- S3, against a real S3-compatible server ------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(s3_endpoint, request):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = "b-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    client.create_bucket(Bucket=name)
    return client, name


def put_adapter(client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for n, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{n}", Body=data)


def test_s3_adapter_is_downloaded_atomically_and_then_served_from_the_disk_cache(
    tmp_path, s3_endpoint, bucket, caplog
):
    client, name = bucket
    put_adapter(client, name, "team/a1", FILES | {"notes.txt": b"not fetched"})
    f = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    caplog.set_level("INFO", logger="adapters")
    path = fetch(f, spec(f"s3://{name}/team/a1"))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == FILES
    assert path.is_relative_to(tmp_path / "cache" / "entries")
    assert list((tmp_path / "cache" / "tmp").iterdir()) == [], "download left a temp dir behind"
    assert any("1021/1021 bytes (100%)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert fetch(f, spec(f"s3://{name}/team/a1")) == path
    assert any("from the disk cache" in r.getMessage() for r in caplog.records)
    # A changed object is a new version: fetched again, into a new entry.
    client.put_object(Bucket=name, Key="team/a1/adapter_model.safetensors", Body=b"v" * 1000)
    new = fetch(f, spec(f"s3://{name}/team/a1"))
    assert new != path and (new / "adapter_model.safetensors").read_bytes() == b"v" * 1000


def test_disk_cache_budget_evicts_least_recently_used(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    for i in range(3):
        put_adapter(client, name, f"ad{i}", FILES)
    # Room for two adapters of 1021 bytes.
    f = Fetcher(cache_dir=tmp_path / "cache", cache_max_bytes=2500, s3_endpoint_url=s3_endpoint)
    p0 = fetch(f, spec(f"s3://{name}/ad0"))
    p1 = fetch(f, spec(f"s3://{name}/ad1"))
    fetch(f, spec(f"s3://{name}/ad0"))  # ad1 is now least recently used
    p2 = fetch(f, spec(f"s3://{name}/ad2"))
    assert p0.exists() and p2.exists() and not p1.exists()
    assert f.cache.total_bytes <= 2500
    assert sorted(p.name for p in (tmp_path / "cache" / "entries").iterdir()) == sorted(
        [p0.name, p2.name]
    )


def test_an_unloaded_adapters_files_outlive_those_of_adapters_still_in_memory(
    tmp_path, s3_endpoint, bucket
):
    client, name = bucket
    for i in range(3):
        put_adapter(client, name, f"ad{i}", FILES)
    f = Fetcher(cache_dir=tmp_path / "cache", cache_max_bytes=2500, s3_endpoint_url=s3_endpoint)
    p0 = fetch(f, spec(f"s3://{name}/ad0"))
    time.sleep(0.02)
    p1 = fetch(f, spec(f"s3://{name}/ad1"))
    time.sleep(0.02)
    f.keep(p0)  # ad0 left a replica's memory; ad1 is still loaded there
    f.keep(tmp_path)  # not an entry: ignored
    p2 = fetch(f, spec(f"s3://{name}/ad2"))
    assert p0.exists() and p2.exists() and not p1.exists()


def test_on_disk_names_the_adapters_whose_files_this_node_holds(tmp_path, s3_endpoint, bucket):
    # What a replica tells routers (RoutingStats.local): which catalogue adapters a load would
    # read from this node's disk cache, whichever process fetched them, until they are evicted.
    client, name = bucket
    for i in range(3):
        put_adapter(client, name, f"ad{i}", FILES)
    catalogue = {f"a{i}": spec(f"s3://{name}/ad{i}", f"a{i}") for i in range(3)}
    catalogue["hub"] = spec("hf://org/repo", "hub")
    f = Fetcher(cache_dir=tmp_path / "cache", cache_max_bytes=2500, s3_endpoint_url=s3_endpoint)
    peer = Fetcher(cache_dir=tmp_path / "cache", cache_max_bytes=2500, s3_endpoint_url=s3_endpoint)
    assert f.on_disk(catalogue) == set()
    fetch(f, catalogue["a0"])
    assert f.on_disk(catalogue) == {"a0"}
    fetch(peer, catalogue["a1"])  # another replica on this node
    assert f.on_disk(catalogue) == {"a0", "a1"}
    fetch(peer, catalogue["a2"])  # the budget holds two: a0, least recently used, goes
    assert f.on_disk(catalogue) == {"a1", "a2"}
    # A new catalogue (an adapter registered under another name for the same files) is indexed.
    assert f.on_disk(catalogue | {"copy": spec(f"s3://{name}/ad2", "copy")}) == {"a1", "a2", "copy"}
    # Another endpoint's objects of the same bucket and prefix are not these.
    other = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url="http://127.0.0.1:9")
    assert other.on_disk(catalogue) == set()


def test_s3_errors_name_the_adapter_and_what_is_missing(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    put_adapter(client, name, "big", {"adapter_model.safetensors": b"x" * 5000})
    f = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint, max_bytes=4096)
    with pytest.raises(AdapterSourceError, match="bucket 'no-such-bucket' does not exist"):
        fetch(f, spec("s3://no-such-bucket/x"))
    with pytest.raises(AdapterSourceError, match=f"s3://{name}/empty has no adapter_config.json"):
        fetch(f, spec(f"s3://{name}/empty"))
    with pytest.raises(InvalidAdapterError, match="5000 bytes .* exceed the per-adapter cap"):
        fetch(f, spec(f"s3://{name}/big"))


def test_s3_image_lora_fetches_only_its_weight_file(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    put_adapter(client, name, "img", {"pixel.safetensors": b"p" * 10, "other.safetensors": b"o"})
    f = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    path = fetch(f, spec(f"s3://{name}/img", kind="image", weight_name="pixel.safetensors"))
    assert [p.name for p in path.iterdir()] == ["pixel.safetensors"]


def test_unreachable_endpoint_is_retried_with_backoff_then_reported(tmp_path, caplog):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    f = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url=endpoint, retries=2, backoff_s=0.01)
    caplog.set_level("WARNING", logger="adapters.sources")
    with pytest.raises(AdapterSourceError, match="adapter 'a1': s3://bucket/x: fetch failed"):
        fetch(f, spec("s3://bucket/x"))
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 2/2" in retries[-1]


def test_a_server_that_never_answers_hits_the_time_limit(tmp_path):
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        f = Fetcher(cache_dir=tmp_path / "cache", s3_endpoint_url=endpoint, timeout_s=1)
        with pytest.raises(AdapterFetchTimeoutError, match="took longer than 1s"):
            fetch(f, spec("s3://bucket/x"))


def test_disk_cache_rebuilds_its_index_and_drops_partial_downloads(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=100)
    tmp = cache.new_tmp()
    (tmp / "w").write_bytes(b"x" * 40)
    entry = cache.commit("k1", tmp)
    partial = cache.new_tmp()
    (partial / "w").write_bytes(b"half")
    live = cache.new_tmp()  # issue 15: another process's download in progress is kept
    os.close(cache._tmp_locks.pop(partial))  # its downloader crashed: the lock file is free
    again = DiskCache(tmp_path, max_bytes=100)
    assert again.lookup("k1") == entry and again.total_bytes == 40
    assert not partial.exists()
    assert live.exists()
    big = again.new_tmp()
    (big / "w").write_bytes(b"x" * 101)
    with pytest.raises(AdapterSourceError, match="do not fit the disk cache budget"):
        again.commit("k2", big)
    assert not big.exists()
