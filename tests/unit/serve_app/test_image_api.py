"""Request parsing and limits of ``/v1/images/generations`` (no Ray needed)."""

import pytest
from pydantic import ValidationError

from adapters.errors import InvalidModelIdError
from serve_app.config import ImageConfig
from serve_app.image_api import adapter_mix, parse_image_request
from serve_app.request_errors import InvalidRequestError

CFG = ImageConfig(
    name="tiny-sd", model="unused", max_size=64, default_size=32, max_n=3, max_steps=8,
    default_steps=2, max_mix=2,
)  # fmt: skip


def test_defaults_are_filled_from_config():
    req = parse_image_request({"prompt": "a cat"}, CFG)
    assert (req.size, req.num_inference_steps, req.n, req.response_format) == (
        "32x32",
        2,
        1,
        "b64_json",
    )
    assert (req.job().width, req.job().height) == (32, 32)
    assert parse_image_request({"prompt": "a cat", "size": "auto"}, CFG).size == "32x32"


def test_openai_fields_accepted():
    body = {"prompt": "p", "model": "tiny-sd:style3d", "n": 2, "size": "64x48", "user": "u",
            "quality": "hd", "style": "vivid", "response_format": "b64_json"}  # fmt: skip
    req = parse_image_request(body, CFG)
    assert (req.job().width, req.job().height, req.job().n) == (64, 48, 2)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "30x32"}, "size"),
        ({"size": "72x64"}, "size"),
        ({"size": "big"}, "size"),
        ({"n": 4}, "n"),
        ({"num_inference_steps": 9}, "num_inference_steps"),
        ({"adapters": [{"name": "a", "weight": 2.5}]}, "adapters"),
        ({"adapters": [{"name": "a", "weight": -3}]}, "adapters"),
        ({"adapters": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "adapters"),
        ({"adapters": [{"name": "a"}, {"name": "a", "weight": 0.5}]}, "adapters"),
        ({"seed": 2**31 - 1, "n": 2}, "seed"),
    ],
)
def test_limits_name_the_field(body, param):
    with pytest.raises(InvalidRequestError) as e:
        parse_image_request({"prompt": "p", **body}, CFG)
    assert e.value.param == param


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"response_format": "url"}, "response_format"),
        ({"prompt": ""}, "prompt"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": "high"}, "guidance_scale"),
        ({"negative-prompt": "x"}, "negative-prompt"),
        ({"adapters": [{"name": "a", "scale": 1}]}, "adapters"),
    ],
)
def test_type_errors_name_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        parse_image_request({"prompt": "p", **body}, CFG)
    assert str(e.value.errors()[0]["loc"][0]) == field


def test_bad_adapter_name_is_an_id_error():
    with pytest.raises(InvalidModelIdError):
        parse_image_request({"prompt": "p", "adapters": [{"name": "../x"}]}, CFG)


def test_adapter_mix_rule():
    req = parse_image_request({"prompt": "p", "adapters": [{"name": "a", "weight": 0.5}]}, CFG)
    assert adapter_mix(req, None) == [("a", 0.5)]
    assert adapter_mix(req, "m") == [("m", 1.0), ("a", 0.5)]
    assert adapter_mix(req, "a") == [("a", 0.5)]  # listed weight wins
    assert adapter_mix(parse_image_request({"prompt": "p"}, CFG), None) == []
