"""Hub fetches: sizes checked before any download, pinned to the resolved commit, and no Hub query
on a later miss. The Hub's API is replaced by a recorder (no network here); the cache is real."""

import asyncio
from types import SimpleNamespace

import huggingface_hub
import huggingface_hub.constants
import pytest

from adapters.errors import InvalidAdapterError
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec

COMMIT = "c" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    calls: dict[str, list] = {"info": [], "download": []}
    sizes = {"adapter_config.json": 100, "adapter_model.safetensors": 1000}

    def model_info(self, repo_id, revision=None, files_metadata=False):
        calls["info"].append((repo_id, revision))
        siblings = [SimpleNamespace(rfilename=n, size=s) for n, s in sizes.items()]
        return SimpleNamespace(sha=COMMIT, siblings=siblings)

    def snapshot_download(repo_id, revision=None, local_files_only=False, **kw):
        calls["download"].append((revision, local_files_only))
        root = tmp_path / "hub" / "snapshots" / revision
        root.mkdir(parents=True, exist_ok=True)
        for n, s in sizes.items():
            (root / n).write_bytes(b"x" * s)
        return str(root)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls, sizes


def fetch(f: Fetcher, source: str):
    return asyncio.run(f.fetch(AdapterSpec(name="a1", source=source)))


def test_too_large_is_refused_before_downloading(tmp_path, hub):
    calls, sizes = hub
    sizes["adapter_model.safetensors"] = 5000
    f = Fetcher(cache_dir=tmp_path / "cache", max_bytes=4096)
    with pytest.raises(InvalidAdapterError, match="5100 bytes .* exceed the per-adapter cap"):
        fetch(f, "hf://org/big")
    assert calls["download"] == []


def test_download_is_pinned_to_the_commit_and_a_later_miss_asks_no_hub(tmp_path, hub):
    calls, _ = hub
    f = Fetcher(cache_dir=tmp_path / "cache")
    path = fetch(f, "hf://org/lora")
    assert path.name == COMMIT and calls["info"] == [("org/lora", None)]
    assert calls["download"] == [(COMMIT, False)]
    assert fetch(f, "hf://org/lora") == path
    assert calls["info"] == [("org/lora", None)]  # not asked again
    assert calls["download"][-1] == (COMMIT, True)  # the local copy only
