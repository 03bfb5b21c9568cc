"""The config tree: shipped configs load, unknown keys and broken limits are refused."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, LLMConfig

CONFIGS = sorted(Path(__file__).parents[3].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = AppConfig.from_yaml(path)
    assert cfg.llm or cfg.image


def test_opt_example_names_the_public_adapter():
    cfg = AppConfig.from_yaml(Path(CONFIGS[0]).with_name("opt-350m.yaml"))
    assert cfg.llm[0].model == "facebook/opt-350m"
    assert cfg.llm[0].adapters[0].source == "hf://ybelkada/opt-350m-lora"


def _llm(**kw):
    return {"name": "m", "model": "/m", **kw}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"llm": [_llm(max_lora_rank=12)]}, "max_lora_rank"),
        ({"llm": [_llm(max_loras=4, max_cpu_loras=2)]}, "max_cpu_loras (2) must be >= max_loras"),
        ({"llm": [_llm(colour="red")]}, "colour"),
        ({"lm": []}, "lm"),
        ({"llm": [_llm(), _llm()]}, "duplicate base model names: m"),
        ({"llm": [_llm(adapters=[{"name": "a", "source": "/a"}] * 2)]}, "duplicate adapter"),
        ({"llm": [_llm(engine="tgi")]}, "engine"),
        ({"llm": [_llm(deployment={"num_replica": 2})]}, "num_replica"),
        ({"llm": [_llm(deployment={"router_knobs": {"spill": 1}})]}, "unknown router knobs"),
        ({"image": [{"name": "sd", "model": "/sd", "default_size": 100}]}, "multiple of 8"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(data)
    assert message in str(info.value)


def test_max_cpu_loras_defaults_to_max_loras():
    assert LLMConfig.model_validate(_llm(max_loras=3)).max_cpu_loras == 3


def test_vllm_replicas_admit_twice_what_the_engine_batches():
    """A vLLM replica's default max_ongoing_requests leaves a queue inside the engine (2 x its
    max_num_seqs); a value the user gives, and other engines, keep theirs; a round trip through
    the JSON the deployments receive keeps it."""
    cfg = LLMConfig.model_validate(_llm())
    assert cfg.deployment.max_ongoing_requests == 256
    again = LLMConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.deployment.max_ongoing_requests == 256
    seqs = _llm(engine_kwargs={"max_num_seqs": 32})
    assert LLMConfig.model_validate(seqs).deployment.max_ongoing_requests == 64
    given = _llm(deployment={"max_ongoing_requests": 8})
    assert LLMConfig.model_validate(given).deployment.max_ongoing_requests == 8
    assert LLMConfig.model_validate(_llm(engine="peft")).deployment.max_ongoing_requests == 64


def test_vllm_schedules_by_priority_unless_told_not_to():
    assert LLMConfig.model_validate(_llm()).schedules_by_priority
    fcfs = _llm(engine_kwargs={"scheduling_policy": "fcfs"})
    assert not LLMConfig.model_validate(fcfs).schedules_by_priority
    assert not LLMConfig.model_validate(_llm(engine="peft")).schedules_by_priority


def test_bad_adapter_name_in_config_is_refused():
    with pytest.raises(Exception, match="invalid adapter name"):
        AppConfig.model_validate({"llm": [_llm(adapters=[{"name": "../x", "source": "/a"}])]})


def test_deployments_queue_a_bounded_number_of_requests():
    """Serve's back-pressure is on by default: every model deployment gets a caller-side queue
    limit that Serve's own deployment config accepts; -1 (no limit) is a choice, 0 is refused."""
    from ray import serve

    from serve_app.app import _options
    from serve_app.config import DeploymentOptions

    opts = _options(DeploymentOptions())
    assert opts["max_queued_requests"] == 256

    class Model:
        pass

    assert serve.deployment(Model).options(**opts).max_queued_requests == 256
    assert _options(DeploymentOptions(max_queued_requests=-1))["max_queued_requests"] == -1
    with pytest.raises(ValidationError):
        DeploymentOptions(max_queued_requests=0)


def test_the_adapter_router_knows_the_replicas_slots_before_their_first_report():
    from serve_app.app import _options
    from serve_app.config import DeploymentOptions

    opts = _options(DeploymentOptions(router="adapter_aware"), slots=6)
    assert opts["request_router_config"].request_router_kwargs["slots"] == 6
    assert "request_router_config" not in _options(DeploymentOptions(router="builtin"), slots=6)
