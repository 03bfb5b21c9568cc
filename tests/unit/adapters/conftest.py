"""Fixtures for adapters/ tests: a tiny Llama, a real PEFT LoRA for it, and its BaseModelInfo."""

import json
from pathlib import Path

import pytest

from adapters.validate import BaseModelInfo

BASE_REF = "test-org/tiny-llama"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> tuple[Path, BaseModelInfo]:
    """A PEFT-saved LoRA (r=8 on q_proj, v_proj) for a tiny random Llama, and that Llama's info.

    Built once per session with the real transformers + PEFT (the format vLLM and PEFT load).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=512,
    )
    model = LlamaForCausalLM(config)
    info = BaseModelInfo.from_module("tiny-llama", {BASE_REF, "/models/tiny-llama"}, model)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    path = tmp_path_factory.mktemp("good") / "good-lora"
    get_peft_model(model, lora).save_pretrained(path)
    config_path = path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["base_model_name_or_path"] = BASE_REF  # a model built from a config has no name
    config_path.write_text(json.dumps(saved))
    return path, info
