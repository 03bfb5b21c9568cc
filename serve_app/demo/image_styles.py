"""The looks of the demo image LoRAs, trained: each LoRA pulls the tiny random pipeline's images
toward one look a person sees at a glance (a colour cast, light or dark) for any prompt and seed,
so a weighted mix of two blends them and weight 0 is the base. Training differentiates through the
pipeline's own sampling (``StableDiffusionPipeline.__call__`` without its ``no_grad``: the
scheduler, guidance and VAE decode the server runs) into PEFT LoRA layers; a few dozen Adam steps
on fixed prompts and seeds, on one CPU thread, so a rebuild gives the same bytes on one machine.
"""

import copy
import random
from typing import Any

# name -> (what a person sees, the RGB colour (0-1) the images are pulled toward)
STYLES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "style3d": ("a blue cast", (0.1, 0.2, 0.95)),
    "cereal": ("a warm red-orange cast", (0.95, 0.3, 0.05)),
    "pixel": ("a green cast", (0.1, 0.9, 0.1)),
    "sketch": ("light, washed out", (0.95, 0.95, 0.95)),
    "kohya": ("a yellow cast", (0.95, 0.85, 0.1)),
}
PULL = 0.7  # target = (1 - PULL) * base image + PULL * colour: the base's structure shows through
STEPS = 30  # Adam steps per LoRA
LR = 3e-2
PROMPTS = [
    "a red fox",
    "a castle on a hill",
    "portrait of an old dog",
    "a city at night",
    "sushi rolls shaped like kawaii cat faces",
    "a sailing boat",
    "flowers in a vase",
    "",
]
SIZE = 32
SAMPLER_STEPS = (2, 4)  # the tests' and the demo's defaults; the look holds for 3-8 as well
BATCH = 3


def train_style(pipe: Any, name: str, lora_configs: dict[str, Any], seed: int) -> dict[str, dict]:
    """Train LoRA ``name`` (style ``STYLES[name]``) on a copy of ``pipe``.

    ``lora_configs`` maps ``"unet"`` / ``"text_encoder"`` to a PEFT ``LoraConfig``. Returns the
    trained PEFT state dicts for those components (``get_peft_model_state_dict``); ``pipe`` is
    left as it was.
    """
    import torch
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    colour = torch.tensor(STYLES[name][1]).view(1, 3, 1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU sums are ordered per thread split: one thread, same bytes
    try:
        pipe = copy.deepcopy(pipe)
        pipe.set_progress_bar_config(disable=True)
        cases = [(p, 1000 + i, s) for i, p in enumerate(PROMPTS) for s in SAMPLER_STEPS]
        with torch.no_grad():
            base = {c: _render(pipe, [c]) for c in cases}
        torch.manual_seed(seed)
        params = []
        for part, cfg in lora_configs.items():
            model = inject_adapter_in_model(cfg, getattr(pipe, part))
            for pname, p in model.named_parameters():
                p.requires_grad_("lora_" in pname)
                if "lora_" in pname:
                    params.append(p)
            setattr(pipe, part, model)
        opt = torch.optim.Adam(params, lr=LR)
        rng = random.Random(seed)
        for _ in range(STEPS):
            steps = rng.choice(SAMPLER_STEPS)
            batch = rng.sample([c for c in cases if c[2] == steps], BATCH)
            target = torch.cat([base[c] for c in batch]) * (1 - PULL) + colour * PULL
            loss = torch.nn.functional.mse_loss(_render(pipe, batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {part: get_peft_model_state_dict(getattr(pipe, part)) for part in lora_configs}
    finally:
        torch.set_num_threads(threads)


def _render(pipe: Any, cases: list[tuple[str, int, int]]):
    """Images (B, 3, H, W) in [0, 1] for (prompt, seed, steps) cases of one step count, through
    the pipeline's own ``__call__`` with gradients on."""
    import torch

    call = type(pipe).__call__.__wrapped__  # __call__ is wrapped in @torch.no_grad()
    return call(
        pipe,
        prompt=[p for p, _, _ in cases],
        num_inference_steps=cases[0][2],
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(s) for _, s, _ in cases],
        output_type="pt",
    ).images
