"""``POST /v1/images/generations`` over HTTP on the real app: real Ray Serve, real Diffusers on the
tiny demo pipeline ("tiny-sd") and its LoRAs, one of them a Kohya/A1111 file."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.e2e.image_config import IMAGE_BASE

PROMPT = "sushi rolls shaped like kawaii cat faces"
ADAPTERS = ["style3d", "cereal", "pixel", "sketch", "kohya"]


@pytest.fixture(scope="module", autouse=True)
def _needs_images(demo_assets):
    if "image" not in demo_assets:
        pytest.skip("the app was started without the image deployment")


def _post(http, **body):
    return http.post("/v1/images/generations", json={"prompt": PROMPT, "seed": 1, **body})


def _png(http, **body) -> bytes:
    resp = _post(http, **body)
    assert resp.status_code == 200, resp.text
    return base64.b64decode(resp.json()["data"][0]["b64_json"])


def _px(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _diff(a: bytes, b: bytes) -> float:
    return float(np.abs(_px(a) - _px(b)).mean())


def _snapshot() -> dict:
    from ray import serve

    handle = serve.get_deployment_handle(f"image:{IMAGE_BASE}", app_name="loraserve")
    return handle.adapter_snapshot.remote().result()


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


def test_base_image(http):
    resp = _post(http, model=IMAGE_BASE, n=2, size="48x32")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    for d in body["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))
        assert image.format == "PNG" and image.size == (48, 32)


def test_same_seed_same_bytes(http):
    assert _png(http, seed=11) == _png(http, seed=11)
    assert _diff(_png(http, seed=11), _png(http, seed=12)) > 5


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_changes_the_image(http, name):
    base = _png(http, model=IMAGE_BASE)
    with_id = _png(http, model=f"{IMAGE_BASE}:{name}")
    assert _diff(with_id, base) > 3
    assert _png(http, model=name) == with_id  # a bare adapter name is accepted too
    assert _png(http, adapters=[{"name": name}]) == with_id


def test_weighted_mix_differs_from_each_single(http):
    mix = [{"name": "style3d", "weight": 0.7}, {"name": "cereal", "weight": 0.5}]
    mixed = _png(http, adapters=mix)
    for single in ("style3d", "cereal"):
        assert _diff(mixed, _png(http, model=f"{IMAGE_BASE}:{single}")) > 1
    # model's adapter joins the mix at weight 1.0 unless listed
    assert _png(http, model=f"{IMAGE_BASE}:style3d", adapters=mix[1:]) != mixed
    assert _png(http, model=f"{IMAGE_BASE}:style3d", adapters=mix) == mixed


def _mean_rgb(http, **body) -> np.ndarray:
    """Mean colour (0-255) over held-out prompts (not the training ones) and two seeds each."""
    pngs = []
    for prompt in ("a lighthouse at dusk", "zebra", "a bowl of soup"):
        resp = _post(http, prompt=prompt, seed=50, n=2, **body)
        assert resp.status_code == 200, resp.text
        pngs += [base64.b64decode(d["b64_json"]) for d in resp.json()["data"]]
    return np.mean([_px(p).reshape(-1, 3).mean(0) for p in pngs], axis=0)


def test_demo_loras_have_their_trained_looks(http):
    """Each demo LoRA was trained to one look (serve_app.demo.image_styles): served, it moves the
    images' mean colour by more than 60 levels, toward its own colour (within ~35 degrees of the
    way from the base's colour to it), and no two look alike."""
    from serve_app.demo.image_styles import STYLES

    base = _mean_rgb(http, model=IMAGE_BASE)
    looks = {name: _mean_rgb(http, model=f"{IMAGE_BASE}:{name}") for name in ADAPTERS}
    for name, got in looks.items():
        moved, wanted = got - base, 255 * np.array(STYLES[name][1]) - base
        cos = moved @ wanted / (np.linalg.norm(moved) * np.linalg.norm(wanted))
        assert np.linalg.norm(moved) > 60 and cos > 0.8, (name, base, got)
    for a in ADAPTERS:
        for b in ADAPTERS[ADAPTERS.index(a) + 1 :]:
            assert np.linalg.norm(looks[a] - looks[b]) > 40, (a, b, looks[a], looks[b])


def test_half_and_half_mix_blends_two_looks_and_weight_zero_is_the_base(http):
    """style3d (blue) and cereal (red-orange) at 0.5 each: a colour between the two, in the
    channels that tell them apart, unlike either; each at weight 0: the base, byte for byte."""
    blue, red = (_mean_rgb(http, model=f"{IMAGE_BASE}:{n}") for n in ("style3d", "cereal"))
    mix = _mean_rgb(
        http, adapters=[{"name": "style3d", "weight": 0.5}, {"name": "cereal", "weight": 0.5}]
    )
    for ch in (0, 2):  # red and blue
        assert min(blue[ch], red[ch]) + 20 < mix[ch] < max(blue[ch], red[ch]) - 20, (blue, red, mix)
    zero = [{"name": "style3d", "weight": 0.0}, {"name": "cereal", "weight": 0.0}]
    assert _png(http, adapters=zero) == _png(http, model=IMAGE_BASE)
    assert _png(http, adapters=zero[:1], seed=7, num_inference_steps=4) == _png(
        http, model=IMAGE_BASE, seed=7, num_inference_steps=4
    )


@pytest.mark.parametrize("name", ["style3d", "cereal", "kohya"])
def test_served_adapter_equals_direct_load(http, demo_assets, name):
    """Same pixels as the LoRA loaded directly into a fresh pipeline (load_lora_weights +
    set_adapters): proves the weights loaded. ``kohya`` is the Kohya/A1111-format file."""
    import torch
    from diffusers import DiffusionPipeline

    assets = demo_assets["image"]
    served = _png(http, model=f"{IMAGE_BASE}:{name}", seed=4, num_inference_steps=3)
    threads, saved = _snapshot()["engine"]["torch_threads"], torch.get_num_threads()
    pipe = DiffusionPipeline.from_pretrained(assets["base"])
    a = assets["adapters"][name]
    pipe.load_lora_weights(a["source"], weight_name=a["weight_name"], adapter_name=name)
    pipe.set_adapters([name])
    torch.set_num_threads(threads)  # the replica's: CPU sums are ordered per thread split
    try:
        direct = pipe(
            PROMPT,
            num_inference_steps=3,
            width=32,
            height=32,
            generator=torch.Generator("cpu").manual_seed(4),
        ).images[0]
    finally:
        torch.set_num_threads(saved)
    assert np.array_equal(_px(served), np.asarray(direct.convert("RGB"), dtype=np.int16))


def test_openai_client(oai):
    out = oai.images.generate(
        model=f"{IMAGE_BASE}:kohya", prompt=PROMPT, n=1, size="32x32",  # type: ignore[arg-type]
        response_format="b64_json", extra_body={"seed": 1, "num_inference_steps": 2},
    )  # fmt: skip
    image = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert image.size == (32, 32)


def test_concurrent_interleaved_adapter_sets(http):
    """Many interleaved requests with different adapter sets, at once: each is its own set's
    image. Batched runs may differ from a solo run by float rounding (<= 2 levels in a few
    pixels on CPU); cross-talk would shift every pixel by an adapter's whole effect."""
    sets = [[], [{"name": "style3d"}], [{"name": "cereal"}], [{"name": "kohya"}],
            [{"name": "style3d", "weight": 0.7}, {"name": "cereal", "weight": 0.5}],
            [{"name": "sketch", "weight": -0.8}, {"name": "pixel", "weight": 0.6}]]  # fmt: skip
    calls = [(i, seed) for seed in (1, 2) for i in range(len(sets))] * 3
    alone = {(i, seed): _px(_png(http, adapters=sets[i], seed=seed)) for i, seed in set(calls)}
    with ThreadPoolExecutor(len(calls)) as pool:
        got = list(pool.map(lambda c: _px(_png(http, adapters=sets[c[0]], seed=c[1])), calls))
    for (i, seed), image in zip(calls, got, strict=True):
        assert np.abs(image - alone[(i, seed)]).max() <= 2, (sets[i], seed)
        nearest = min(alone, key=lambda k: np.abs(image - alone[k]).mean())
        assert nearest == (i, seed), (sets[i], seed, nearest)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "33x32"}, "size"),
        ({"size": "128x128"}, "size"),
        ({"n": 4}, "n"),
        ({"num_inference_steps": 9}, "num_inference_steps"),
        ({"adapters": [{"name": "style3d", "weight": 3}]}, "adapters"),
        ({"adapters": [{"name": n} for n in ADAPTERS[:4]]}, "adapters"),
        (
            {"model": f"{IMAGE_BASE}:kohya", "adapters": [{"name": n} for n in ADAPTERS[:3]]},
            "adapters",
        ),
        ({"response_format": "url"}, "response_format"),
        ({"guidance_scale": "strong"}, "guidance_scale"),
    ],
)
def test_bad_fields_are_400_naming_the_field(http, body, param):
    err = _error(_post(http, **body), 400)
    assert param in (err.get("param") or "") or param in err["message"], err


def test_unknown_adapter_is_404(http):
    assert "nope" in _error(_post(http, model=f"{IMAGE_BASE}:nope"), 404)["message"]
    assert "ghost" in _error(_post(http, adapters=[{"name": "ghost"}]), 404)["message"]


def test_text_model_on_images_route_is_400(http):
    _error(_post(http, model="tiny-llama"), 400)


def test_wrong_base_lora_is_422_and_replica_healthy(http, admin, demo_assets):
    """A LoRA made for another base (different cross-attention width) is refused at
    registration with a clear message; the replica keeps serving the same images."""
    before = _png(http, model=f"{IMAGE_BASE}:style3d")
    wrong = demo_assets["image"]["wrong_base_adapter"]
    resp = admin.post("/v1/adapters", json={"base": IMAGE_BASE, "name": "otherbase", **wrong})
    err = _error(resp, 422)
    assert "otherbase" in err["message"] and "does not fit this pipeline" in err["message"]
    assert _png(http, model=f"{IMAGE_BASE}:style3d") == before
    assert _error(_post(http, model=f"{IMAGE_BASE}:otherbase"), 404)
