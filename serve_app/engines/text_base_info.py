"""Module names and Linear shapes of a Hugging Face causal LM, read from its config alone: the model
is built on the meta device, so no weights are loaded and big models cost nothing.
"""

from adapters.validate import BaseModelInfo


def text_base_info(name: str, model: str, extra_refs: tuple[str, ...] = ()) -> BaseModelInfo:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    refs = {name, model, getattr(config, "_name_or_path", "") or model, *extra_refs}
    return BaseModelInfo.from_module(name, refs, net)
