"""The image deployment on local Ray Serve, called through handles as the ingress calls it, with the
real Diffusers engine on the tiny demo pipeline and its LoRAs (built once for this module).

Four deployments share one Serve instance: ``img`` (batching on, all demo LoRAs fit), ``img1``
(max_batch=1: bitwise-reproducible under load), ``small`` (2 adapter slots, for eviction) and
``one`` (one request at a time, one queued: Serve's back-pressure, options as ``build_app`` sets
them).
"""

import base64
import copy
import dataclasses
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.errors import AdapterCapacityError, InvalidAdapterError
from serve_app.app import _options
from serve_app.config import DeploymentOptions, ImageConfig
from serve_app.demo.image_assets import build_image_assets
from serve_app.image_api import parse_image_request
from tests.ports import free_port
from tests.ray_start import init_ray

PROMPT = "sushi rolls shaped like kawaii cat faces"
SIZE = 32


def _cfg(assets: dict, name: str, **over) -> dict:
    adapters = [{"name": n, "kind": "image", **a} for n, a in assets["adapters"].items()]
    cfg = {
        "name": name,
        "model": assets["base"],
        "max_adapters": 8,
        "max_size": 64,
        "default_size": SIZE,
        "default_steps": 2,
        "max_steps": 8,
        "adapters": adapters,
        "deployment": {"ray_actor_options": {"num_cpus": 0.3}},
    }
    return ImageConfig.model_validate({**cfg, **over}).model_dump(mode="json")


REQ_CFG = ImageConfig.model_validate(_cfg({"base": "unused", "adapters": {}}, "tiny-sd"))


def _big_loras(root, base: str, count: int, rank: int) -> list[dict]:
    """LoRAs of ~``rank``x the usual size, so memory growth is measurable in process RSS."""
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

    from serve_app.demo.image_assets import save_diffusers_lora

    pipe = DiffusionPipeline.from_pretrained(base)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"]
    specs = []
    for i in range(count):
        cfg = LoraConfig(r=rank, lora_alpha=1, target_modules=targets, init_lora_weights=False)
        save_diffusers_lora(pipe, root / f"big{i}", "big.safetensors", cfg, None, 100 + i)
        specs.append(
            {"name": f"big{i}", "source": str(root / f"big{i}"), "weight_name": "big.safetensors"}
        )
    return specs


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    # The demo's assets (built once, shared with tests/e2e: its LoRAs are trained); the test's
    # own LoRAs in a temp dir.
    demo = Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")).resolve()
    info = build_image_assets(demo)
    info["demo_root"] = str(demo)
    root = tmp_path_factory.mktemp("image-assets")
    info["big"] = _big_loras(root / "big", info["base"], count=6, rank=2048)
    info["root"] = str(root)
    info["bad"] = _bad_loras(root / "bad", info)
    return info


def _bad_loras(root, info: dict) -> dict[str, dict]:
    """Files that are valid safetensors but do not fit the pipeline: some tensors for a layer it
    lacks (Diffusers only warns "unexpected keys": a silent partial load) and none that match."""
    import torch
    from safetensors.torch import load_file, save_file

    a = info["adapters"]["style3d"]
    good = load_file(f"{a['source']}/{a['weight_name']}")
    extra = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn9.to_q"  # PEFT keys
    partial = {
        **good,
        f"{extra}.lora_A.weight": torch.ones(4, 8),
        f"{extra}.lora_B.weight": torch.ones(8, 4),
    }
    nomatch = {"unet.foo.bar.lora.down.weight": torch.ones(4, 8),
               "unet.foo.bar.lora.up.weight": torch.ones(8, 4)}  # fmt: skip
    root.mkdir()
    out = {}
    for name, sd in [("partial", partial), ("nomatch", nomatch)]:
        save_file(sd, str(root / f"{name}.safetensors"))
        out[name] = {"name": name, "kind": "image", "source": str(root),
                     "weight_name": f"{name}.safetensors"}  # fmt: skip
    return out


@pytest.fixture(scope="module")
def serve_handles(assets):
    import ray
    from ray import serve

    from serve_app.deployments.image import ImageDeployment

    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    roots = [assets["root"], assets["demo_root"]]
    sources = {"allowed_roots": roots, "cache_dir": f"{assets['root']}/cache"}
    apps = {
        "img": (_cfg(assets, "tiny-sd"), {}),
        "img1": (_cfg(assets, "tiny-sd"), {"max_batch": 1}),
        "small": (_cfg(assets, "tiny-sd", max_adapters=2, max_mix=2), {}),
    }
    handles = {}
    for name, (cfg, options) in apps.items():
        app = ImageDeployment.options(name=name, ray_actor_options={"num_cpus": 0.3}).bind(
            cfg, sources, None, options
        )
        handles[name] = serve.run(app, name=name, route_prefix=None)
    one = DeploymentOptions(max_ongoing_requests=1, max_queued_requests=1,
                            ray_actor_options={"num_cpus": 0.2})  # fmt: skip
    app = ImageDeployment.options(name="one", **_options(one)).bind(
        _cfg(assets, "tiny-sd"), sources, None
    )
    handles["one"] = serve.run(app, name="one", route_prefix=None)
    yield handles
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def specs(assets) -> dict[str, dict]:
    out = {n: {"name": n, "kind": "image", **a} for n, a in assets["adapters"].items()}
    out["otherbase"] = {"name": "otherbase", "kind": "image", **assets["wrong_base_adapter"]}
    out.update({s["name"]: {**s, "kind": "image"} for s in assets["big"]})
    out.update(assets["bad"])
    out["v1.5_style"] = {**out["style3d"], "name": "v1.5_style"}  # '.' is not a PEFT key char
    return out


def _request(handle, specs, adapters=(), seed=1, **body):
    req = parse_image_request({"prompt": PROMPT, "seed": seed, **body}, REQ_CFG)
    mix = [{"spec": specs[n], "weight": w} for n, w in adapters]
    mid = ",".join(sorted(n for n, _ in adapters))
    return handle.options(multiplexed_model_id=mid).generate.remote(req.job(), mix)


def _images(response) -> list[bytes]:
    return [base64.b64decode(d["b64_json"]) for d in response.result()["data"]]


def _one(handle, specs, adapters=(), seed=1, **body) -> bytes:
    return _images(_request(handle, specs, adapters, seed, **body))[0]


def _px(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _diff(a: bytes, b: bytes) -> float:
    """Mean absolute pixel difference in 0..255 levels."""
    return float(np.abs(_px(a) - _px(b)).mean())


def test_base_image_is_a_png_of_the_requested_size(serve_handles, specs):
    out = _request(serve_handles["img"], specs, size="48x32", n=2).result()
    assert isinstance(out["created"], int) and len(out["data"]) == 2
    for d in out["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))
        assert image.format == "PNG" and image.size == (48, 32)
        assert np.asarray(image).std() > 5  # an image, not a blank


def test_same_seed_same_bytes_other_seed_other_image(serve_handles, specs):
    h = serve_handles["img"]
    a, b = _one(h, specs, seed=7), _one(h, specs, seed=7)
    assert a == b
    assert _diff(a, _one(h, specs, seed=8)) > 5
    # n images: image i is seed + i
    two = _images(_request(h, specs, seed=7, n=2))
    assert two[0] == a and two[1] == _one(h, specs, seed=8)


def test_each_adapter_changes_the_image(serve_handles, specs, assets):
    h = serve_handles["img"]
    base = _one(h, specs)
    singles = {n: _one(h, specs, [(n, 1.0)]) for n in assets["adapters"]}
    for name, png in singles.items():
        assert _diff(png, base) > 3, f"{name} did not change the image"
    names = list(singles)
    for i, x in enumerate(names):  # and each one differently
        for y in names[i + 1 :]:
            assert _diff(singles[x], singles[y]) > 2, (x, y)
    assert _one(h, specs) == base  # base model again after adapters: disable_lora works


def test_weighted_mix_differs_from_each_single(serve_handles, specs):
    h = serve_handles["img"]
    mix = _one(h, specs, [("style3d", 0.7), ("cereal", 0.5)])
    for name in ("style3d", "cereal"):
        assert _diff(mix, _one(h, specs, [(name, 1.0)])) > 1
    assert _diff(mix, _one(h, specs, [("style3d", 0.7), ("cereal", 0.9)])) > 0.5
    assert mix == _one(h, specs, [("style3d", 0.7), ("cereal", 0.5)])


@pytest.mark.parametrize("name", ["style3d", "cereal", "kohya", "sketch"])
def test_served_adapter_equals_lora_loaded_directly(serve_handles, specs, assets, name):
    """The replica's image equals what a fresh pipeline gives with load_lora_weights +
    set_adapters: the weights really loaded (not a 'missing keys' no-op). ``kohya`` is a
    Kohya/A1111 file Diffusers converts; ``sketch`` is picked by weight_name from a 2-file dir."""
    import torch
    from diffusers import DiffusionPipeline

    served = _one(serve_handles["img"], specs, [(name, 0.8)], seed=3)
    threads = serve_handles["img"].adapter_snapshot.remote().result()["engine"]["torch_threads"]
    pipe = DiffusionPipeline.from_pretrained(assets["base"])
    a = assets["adapters"][name]
    pipe.load_lora_weights(a["source"], weight_name=a["weight_name"], adapter_name=name)
    pipe.set_adapters([name], adapter_weights=[0.8])
    direct = _with_threads(
        threads,
        lambda: pipe(
            PROMPT,
            num_inference_steps=2,
            width=SIZE,
            height=SIZE,
            generator=torch.Generator("cpu").manual_seed(3),
        ).images[0],
    )
    assert np.array_equal(_px(served), np.asarray(direct.convert("RGB"), dtype=np.int16))
    assert _diff(served, _one(serve_handles["img"], specs, seed=3)) > 3


def _with_threads(threads: int, fn):
    """Run ``fn`` with the replica's torch thread count: on CPU, sums are ordered per thread
    split, and a different count can move a pixel by one level."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


SETS = [
    (),
    (("style3d", 1.0),),
    (("cereal", 1.0),),
    (("kohya", 1.0),),
    (("pixel", 1.0),),
    (("style3d", 0.7), ("cereal", 0.5)),
    (("sketch", -0.8), ("kohya", 0.6)),
]


def _interleaved(handle, specs, rounds: int) -> list[tuple[tuple, int, list[bytes]]]:
    """Fire every set x seed request at once (interleaved), then collect."""
    calls = [(s, seed) for _ in range(rounds) for seed in (1, 2) for s in SETS]
    responses = [(s, seed, _request(handle, specs, s, seed)) for s, seed in calls]
    return [(s, seed, _images(r)) for s, seed, r in responses]


def test_concurrent_mixed_adapter_sets_no_cross_talk(serve_handles, specs):
    """Many interleaved requests with different adapter sets (max_batch=1: every set switch is a
    real activate+run under the pipeline lock) each give exactly the image their set gives alone."""
    h = serve_handles["img1"]
    alone = {(s, seed): _one(h, specs, s, seed) for s in SETS for seed in (1, 2)}
    results = _interleaved(h, specs, rounds=3)
    assert len(results) == 3 * 2 * len(SETS)
    for s, seed, images in results:
        assert images[0] == alone[(s, seed)], f"cross-talk for {s} seed {seed}"


def test_concurrent_requests_are_batched_without_cross_talk(serve_handles, specs):
    """Same with batching on: requests for the same set run as one pipeline call. A batched image
    may differ from the solo one by float rounding (a level in a few pixels on CPU); any
    cross-talk would be the size of a whole adapter's effect (several levels on every pixel)."""
    h = serve_handles["img"]
    alone = {(s, seed): _one(h, specs, s, seed) for s in SETS for seed in (1, 2)}
    before = h.adapter_snapshot.remote().result()["engine"]
    results = _interleaved(h, specs, rounds=3)
    after = h.adapter_snapshot.remote().result()["engine"]
    for s, seed, images in results:
        own = _px(images[0])
        assert np.abs(own - _px(alone[(s, seed)])).max() <= 2, (s, seed)
        nearest = min(alone, key=lambda k: np.abs(own - _px(alone[k])).mean())
        assert nearest == (s, seed), f"{s} seed {seed} looks like {nearest}"
    assert after["batched_requests"] > before["batched_requests"]
    assert after["calls"] - before["calls"] < len(results)  # fewer pipeline calls than requests


def test_eviction_bounds_adapters_and_memory(serve_handles, specs, assets):
    """2 slots, 6 big LoRAs cycled twice: the pipeline never holds more than 2 adapters and the
    replica's RSS stops growing after the first cycle (delete_adapters gives memory back)."""
    h = serve_handles["small"]
    names = [s["name"] for s in assets["big"]]
    rss = []
    for _ in range(3):
        for name in names:
            _one(h, specs, [(name, 1.0)])
            snap = h.adapter_snapshot.remote().result()
            assert len(snap["engine_adapters"]) <= 2, snap["engine_adapters"]
            assert set(snap["engine_adapters"]) == set(snap["resident"])
        rss.append(snap["rss_bytes"])
    one_lora = _file_bytes(specs[names[0]])
    # Control: a replica with room for all 6 keeps them, and its RSS grows by about their size.
    roomy = serve_handles["img1"]
    # NOTE: room first: under lfu (the default) the adapters earlier tests used more often than
    # once outlive newcomers requested once, so the 6 would evict each other instead.
    for name in roomy.adapter_snapshot.remote().result()["resident"]:
        assert roomy.evict_adapter.remote(name).result()
    roomy_before = roomy.adapter_snapshot.remote().result()["rss_bytes"]
    for name in names:
        _one(roomy, specs, [(name, 1.0)])
    roomy_after = roomy.adapter_snapshot.remote().result()
    print(
        f"2 slots: RSS after each of 3 cycles over {len(names)} LoRAs of {one_lora / 2**20:.1f} "
        f"MiB: {[round(r / 2**20, 1) for r in rss]} MiB; 8 slots: "
        f"{roomy_before / 2**20:.1f} -> {roomy_after['rss_bytes'] / 2**20:.1f} MiB"
    )
    assert set(names) <= set(roomy_after["engine_adapters"])
    assert roomy_after["rss_bytes"] - roomy_before > 3 * one_lora  # the measure can see LoRAs
    assert snap["evictions"] >= 3 * len(names) - 2
    # Without unloading, every cycle would add all 6 LoRAs (6 x one_lora) to the process.
    assert rss[2] - rss[0] < 2 * one_lora, rss
    assert rss[1] - rss[0] < 2 * one_lora, rss


def _file_bytes(spec: dict) -> int:
    from pathlib import Path

    return (Path(spec["source"]) / spec["weight_name"]).stat().st_size


@pytest.mark.parametrize(
    ("name", "why"),
    [("otherbase", "size mismatch"), ("partial", "unexpected keys"), ("nomatch", "not found")],
)
def test_lora_that_does_not_fit_is_refused_and_replica_healthy(serve_handles, specs, name, why):
    """``otherbase`` was made for a pipeline with another cross-attention width (as an SD 1.5
    LoRA on SDXL); ``partial`` would load only in part; ``nomatch`` matches no layer at all."""
    h = serve_handles["img"]
    before = _one(h, specs, [("style3d", 1.0)], seed=5)
    with pytest.raises(InvalidAdapterError, match="does not fit this pipeline"):
        _one(h, specs, [(name, 1.0)])
    with pytest.raises(InvalidAdapterError, match=why):
        h.validate_adapter.remote(specs[name]).result()
    snap = h.adapter_snapshot.remote().result()
    assert name not in snap["engine_adapters"] and snap["states"][name] == "failed"
    assert not any("check" in n for n in snap["engine_adapters"])
    assert _one(h, specs, [("style3d", 1.0)], seed=5) == before  # nothing left behind
    assert _one(h, specs, [("style3d", 1.0), ("cereal", 0.5)], seed=5) != before


def test_adapter_names_with_dots_work(serve_handles, specs):
    h = serve_handles["img"]
    assert _one(h, specs, [("v1.5_style", 1.0)]) == _one(h, specs, [("style3d", 1.0)])
    snap = h.adapter_snapshot.remote().result()
    assert "v1.5_style" in snap["engine_adapters"] and "v1.5_style" in snap["resident"]


def test_validate_adapter_fills_size_and_rank(serve_handles, specs):
    h = serve_handles["img"]
    checked = h.validate_adapter.remote(specs["kohya"]).result()
    assert checked["size_bytes"] == _file_bytes(specs["kohya"]) and checked["rank"] == 4
    assert checked["base"] == "tiny-sd"


def test_pin_evict_and_capacity(serve_handles, specs):
    h = serve_handles["small"]
    h.pin_adapter.remote(specs["style3d"]).result()
    h.pin_adapter.remote(specs["cereal"]).result()
    with pytest.raises(AdapterCapacityError):  # both slots pinned
        _one(h, specs, [("kohya", 1.0)])
    snap = h.adapter_snapshot.remote().result()
    assert sorted(snap["pinned"]) == ["cereal", "style3d"]
    h.unpin_adapter.remote("cereal").result()
    assert _diff(_one(h, specs, [("kohya", 1.0)]), _one(h, specs)) > 3
    assert h.evict_adapter.remote("style3d").result() is True
    snap = h.adapter_snapshot.remote().result()
    assert "style3d" not in snap["engine_adapters"] and snap["pinned"] == []


def test_replica_stays_responsive_while_generating(serve_handles, specs):
    """Blocking torch work runs on a worker thread: a snapshot answers while images render
    (before the first of them is done), not after a pipeline call lets the event loop go."""
    h = serve_handles["img"]
    _one(h, specs, [("style3d", 1.0)])  # resident: what follows is rendering only
    body = {"size": "64x64", "num_inference_steps": 8, "n": 4}
    pending = [_request(h, specs, [("style3d", 1.0)], seed=s, **body) for s in range(3)]
    time.sleep(0.2)  # rendering has begun
    with ThreadPoolExecutor(4) as pool:
        images = [pool.submit(lambda p=p: (_images(p), time.monotonic())) for p in pending]
        snap = pool.submit(lambda: (h.adapter_snapshot.remote().result(), time.monotonic()))
        (state, snapped_at), done = snap.result(), [f.result() for f in images]
    assert state["resident"] and all(len(imgs) == 4 for imgs, _ in done)
    first_done = min(t for _, t in done)
    assert snapped_at < first_done, f"snapshot {snapped_at - first_done:+.3f}s after an image"


def test_mix_larger_than_allowed_is_refused(serve_handles, specs):
    from serve_app.request_errors import InvalidRequestError

    h = serve_handles["img"]
    req = parse_image_request({"prompt": PROMPT}, REQ_CFG).job()
    mix = [{"spec": specs[n], "weight": 1.0} for n in ["style3d", "cereal", "kohya", "pixel"]]
    mix.append({"spec": copy.deepcopy(specs["sketch"]), "weight": 1.0})
    with pytest.raises(InvalidRequestError, match="at most 4"):
        h.generate.remote(req, mix).result()


def _long_job(steps: int):
    """A job of ``steps`` denoising steps (the ingress caps steps; the deployment does not)."""
    return dataclasses.replace(parse_image_request({"prompt": PROMPT}, REQ_CFG).job(), steps=steps)


def _wait_for(cond, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_cancelled_request_stops_its_pipeline_call_and_the_next_is_served(serve_handles, specs):
    """A caller that goes away mid-image (Serve cancels the replica's call; it does so for an HTTP
    client that disconnects): the pipeline stops after the step it is on, far short of the 400
    steps asked for, and the next request is served normally."""
    from ray.serve.exceptions import RequestCancelledError

    h = serve_handles["img"]

    def engine() -> dict:
        return h.adapter_snapshot.remote().result()["engine"]

    before = engine()
    resp = h.generate.remote(_long_job(400), [])
    _wait_for(lambda: engine()["steps"] - before["steps"] >= 2)  # it is rendering
    resp.cancel()
    _wait_for(lambda: engine()["running"] == 0)
    after = engine()
    ran = after["steps"] - before["steps"]
    print(f"\ncancelled image request: {ran} of 400 denoising steps ran")
    assert after["cancelled"] == before["cancelled"] + 1 and after["calls"] == before["calls"]
    assert ran < 100, after
    with pytest.raises(RequestCancelledError):
        resp.result()
    assert _one(h, specs) == _one(h, specs)  # served, and as deterministic as ever


def test_overload_is_refused_at_once_as_503_retry_after(serve_handles, specs):
    """Six long requests at a deployment that runs one and queues one (``max_queued_requests``):
    the rest are refused at once with Serve's BackPressureError, which the ingress answers as
    503 + Retry-After; cancelling the accepted ones frees the replica for the next request."""
    from ray.serve.exceptions import BackPressureError

    from serve_app.ingress import _error

    h = serve_handles["one"]
    _one(h, specs)  # ready and warm
    sent = [h.generate.remote(_long_job(400), []) for _ in range(6)]
    refused, accepted = [], []
    for resp in sent:
        try:
            resp.result(timeout_s=0.5)
        except BackPressureError as e:
            refused.append(e)
        except TimeoutError:
            accepted.append(resp)
    print(f"\n6 long requests at 1 running + 1 queued: {len(refused)} refused at once")
    assert len(refused) >= 4 and len(accepted) <= 2
    answer = _error(refused[0])
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert b"overloaded" in answer.body
    for resp in accepted:
        resp.cancel()
    assert len(_images(h.generate.remote(_long_job(2), []))) == 1
    engine = h.adapter_snapshot.remote().result()["engine"]
    assert engine["calls"] == 2, engine  # the warm-up and the last: no 400-step call finished
