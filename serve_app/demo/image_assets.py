"""Tiny, offline image assets for the demo and the tests: a Stable Diffusion pipeline small enough
to make a 32x32 image in ~0.1 s on a CPU, and LoRAs for it in the formats users bring (Diffusers /
PEFT files, a Kohya/A1111 file, a multi-file source) plus one LoRA made for a different base.
Everything is built from fixed seeds, so two builds give the same bytes.
"""

import json
from pathlib import Path
from typing import Any

# Published in the returned dict and used by tests: these LoRAs are made for ``base``.
DIFFUSERS_ADAPTERS = ("style3d", "cereal")
KOHYA_ADAPTER = "kohya"
PACK = {"pixel": "pixel.safetensors", "sketch": "sketch.safetensors"}  # one dir, two files
WRONG_BASE_ADAPTER = "otherbase"
_MARKER = ".complete.json"
_STRENGTH = 4.0


def build_image_assets(root: Path) -> dict[str, Any]:
    """Build (or reuse) the tiny pipeline and its LoRAs under ``root/"image"``.

    Returns ``{"base": <pipeline dir>, "other_base": <dir>, "adapters": {name: {"source": dir,
    "weight_name": file}}, "wrong_base_adapter": {...}}``. A marker file makes repeated calls free.
    """
    out = Path(root).resolve() / "image"  # absolute paths in the marker: usable from any cwd
    marker = out / _MARKER
    if marker.exists():
        return json.loads(marker.read_text())

    import torch
    from peft import LoraConfig

    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    other = out / "other_base"
    pipe = tiny_pipeline(cross_attention_dim=32, seed=0)
    pipe.save_pretrained(base)
    tiny_pipeline(cross_attention_dim=64, seed=1).save_pretrained(other)

    attn = ["to_q", "to_k", "to_v", "to_out.0"]
    adapters: dict[str, dict[str, str]] = {}
    for i, name in enumerate(DIFFUSERS_ADAPTERS):
        te = LoraConfig(
            r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        unet_cfg = LoraConfig(r=4, lora_alpha=4, target_modules=attn, init_lora_weights=False)
        d = out / "adapters" / name
        save_diffusers_lora(
            pipe, d, f"{name}.safetensors", unet_cfg, te if i == 1 else None, 10 + i
        )
        adapters[name] = {"source": str(d), "weight_name": f"{name}.safetensors"}

    pack = out / "adapters" / "pack"
    for i, (name, file) in enumerate(PACK.items()):
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=attn, init_lora_weights=False)
        save_diffusers_lora(pipe, pack, file, cfg, None, 20 + i)
        adapters[name] = {"source": str(pack), "weight_name": file}

    kohya = out / "adapters" / KOHYA_ADAPTER
    save_kohya_lora(pipe, kohya / "kohya_style.safetensors", seed=30)
    adapters[KOHYA_ADAPTER] = {"source": str(kohya), "weight_name": "kohya_style.safetensors"}

    wrong = out / "adapters" / WRONG_BASE_ADAPTER
    other_pipe = tiny_pipeline(cross_attention_dim=64, seed=1)
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=attn, init_lora_weights=False)
    save_diffusers_lora(other_pipe, wrong, "otherbase.safetensors", cfg, None, 40)
    torch.manual_seed(0)

    info = {
        "base": str(base),
        "other_base": str(other),
        "adapters": adapters,
        "wrong_base_adapter": {"source": str(wrong), "weight_name": "otherbase.safetensors"},
    }
    marker.write_text(json.dumps(info, indent=2))
    return info


def tiny_pipeline(cross_attention_dim: int = 32, seed: int = 0):
    """A random-weight StableDiffusionPipeline (32x32 latents at sample size, 2x VAE scale)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            projection_dim=cross_attention_dim,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_diffusers_lora(pipe, out_dir: Path, weight_name: str, unet_cfg, te_cfg, seed: int) -> Path:
    """Write a Diffusers-format LoRA for ``pipe`` (random, non-zero weights); ``pipe`` unchanged."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    layers = {}
    for key, model, cfg in [
        ("unet_lora_layers", pipe.unet, unet_cfg),
        ("text_encoder_lora_layers", pipe.text_encoder, te_cfg),
    ]:
        if cfg is not None:
            model = inject_adapter_in_model(cfg, copy.deepcopy(model))
            sd = get_peft_model_state_dict(model)
            # Random B at init scale moves a 2-step image by only ~1/255: strengthen it.
            sd = {k: v * (_STRENGTH if "lora_B" in k else 1.0) for k, v in sd.items()}
            layers[key] = convert_state_dict_to_diffusers(sd)
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out_dir, weight_name=weight_name, **layers)
    return out_dir / weight_name


def save_kohya_lora(pipe, path: Path, seed: int, rank: int = 4, alpha: float = 8.0) -> Path:
    """Write a Kohya/A1111-style file: ``lora_unet_<module with _>.lora_down.weight`` /
    ``lora_up.weight`` / ``.alpha`` for UNet attention and projection layers and ``lora_te_...``
    for the text encoder, the way kohya-ss sd-scripts names SD 1.x LoRAs."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    targets = [
        (
            "lora_unet_",
            pipe.unet,
            ("attn1.to_q", "attn2.to_k", "attn2.to_v", "to_out.0", "proj_in"),
        ),
        ("lora_te_", pipe.text_encoder, ("self_attn.q_proj", "self_attn.out_proj")),
    ]
    for prefix, model, suffixes in targets:
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or not name.endswith(suffixes):
                continue
            key = prefix + name.replace(".", "_")
            down = torch.randn(rank, module.in_features, generator=g) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=g) / rank**0.5
            tensors[f"{key}.lora_down.weight"] = down.contiguous()
            tensors[f"{key}.lora_up.weight"] = up.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _tokenizer():
    """A CLIPTokenizer over a byte-level vocabulary (every byte, with and without ``</w>``), so it
    needs no download and tokenizes any prompt, one token per character."""
    import tempfile

    from transformers import CLIPTokenizer

    byte_chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(byte_chars)}
    vocab.update({c + "</w>": len(byte_chars) + i for i, c in enumerate(byte_chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=77
        )


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]
