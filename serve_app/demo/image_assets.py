"""Tiny, offline image assets for the demo and the tests: a Stable Diffusion pipeline small enough
to make a 32x32 image in ~0.1 s on a CPU, and LoRAs for it in the formats users bring (Diffusers /
PEFT files, a Kohya/A1111 file, a multi-file source), each trained to a look a person sees (a
colour cast; serve_app.demo.image_styles), plus one random LoRA made for a different base.
Everything is built from fixed seeds, so two builds on one machine give the same bytes.
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
# Besides attention: the layers through which a LoRA can shift a whole image's colour
_STYLE_TARGETS = ("proj_in", "proj_out", "time_emb_proj", "conv_out")
# Kohya/A1111 file's modules (kohya-ss names UNet attention and projections, text encoder attention)
_KOHYA_UNET = (
    "attn1.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "time_emb_proj",
)
_KOHYA_TE = ("self_attn.q_proj", "self_attn.out_proj")
# A random 4-channel decoder with its last conv at init scale keeps every image near mid-grey: no
# latent, so no LoRA, could give it a colour cast. With 16 channels and that conv drawn 4x larger
# (without bias) its colours span most of the range (red, green, blue, light, dark all reachable).
_DECODER_GAIN = 4.0


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

    from serve_app.demo.image_styles import train_style

    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    other = out / "other_base"
    pipe = tiny_pipeline(cross_attention_dim=32, seed=0)
    pipe.save_pretrained(base)
    tiny_pipeline(cross_attention_dim=64, seed=1).save_pretrained(other)

    attn = ["to_q", "to_k", "to_v", "to_out.0"]
    styled = [*attn, *_STYLE_TARGETS]
    adapters: dict[str, dict[str, str]] = {}
    # Each demo LoRA is trained to a look (serve_app.demo.image_styles); the formats vary: UNet
    # only, UNet + text encoder, two files in one folder, a Kohya/A1111 file.
    for i, name in enumerate(DIFFUSERS_ADAPTERS):
        cfgs = {"unet": LoraConfig(r=4, lora_alpha=4, target_modules=styled)}
        if i == 1:
            cfgs["text_encoder"] = LoraConfig(
                r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]
            )
        d = out / "adapters" / name
        write_diffusers_lora(d, f"{name}.safetensors", train_style(pipe, name, cfgs, 10 + i))
        adapters[name] = {"source": str(d), "weight_name": f"{name}.safetensors"}

    pack = out / "adapters" / "pack"
    for i, (name, file) in enumerate(PACK.items()):
        cfgs = {"unet": LoraConfig(r=2, lora_alpha=4, target_modules=styled)}
        write_diffusers_lora(pack, file, train_style(pipe, name, cfgs, 20 + i))
        adapters[name] = {"source": str(pack), "weight_name": file}

    kohya = out / "adapters" / KOHYA_ADAPTER
    cfgs = {
        "unet": LoraConfig(r=4, lora_alpha=8, target_modules=list(_KOHYA_UNET)),
        "text_encoder": LoraConfig(r=4, lora_alpha=8, target_modules=list(_KOHYA_TE)),
    }
    trained = train_style(pipe, KOHYA_ADAPTER, cfgs, 30)
    write_kohya_lora(kohya / "kohya_style.safetensors", trained, alpha=8.0)
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
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(_DECODER_GAIN)
        vae.decoder.conv_out.bias.zero_()
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
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    layers = {}
    for part, model, cfg in [
        ("unet", pipe.unet, unet_cfg),
        ("text_encoder", pipe.text_encoder, te_cfg),
    ]:
        if cfg is not None:
            sd = get_peft_model_state_dict(inject_adapter_in_model(cfg, copy.deepcopy(model)))
            # Random B at init scale moves a 2-step image by only ~1/255: strengthen it.
            layers[part] = {k: v * (_STRENGTH if "lora_B" in k else 1.0) for k, v in sd.items()}
    return write_diffusers_lora(out_dir, weight_name, layers)


def write_diffusers_lora(out_dir: Path, weight_name: str, layers: dict[str, dict]) -> Path:
    """Save PEFT state dicts (``{"unet": ..., "text_encoder": ...}``) as one Diffusers LoRA file."""
    from diffusers import StableDiffusionPipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        weight_name=weight_name,
        **{f"{part}_lora_layers": sd for part, sd in layers.items()},
    )
    return out_dir / weight_name


def write_kohya_lora(path: Path, layers: dict[str, dict], alpha: float) -> Path:
    """Save PEFT state dicts as a Kohya/A1111-style file, the way kohya-ss sd-scripts names SD 1.x
    LoRAs: ``lora_unet_<module with _>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` (and
    ``lora_te_...`` for the text encoder)."""
    import torch
    from safetensors.torch import save_file

    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    tensors: dict[str, torch.Tensor] = {}
    for part, sd in layers.items():
        for k, v in sd.items():
            module, kind = k.rsplit(".lora_", 1)
            key = prefix[part] + module.replace(".", "_")
            tensors[f"{key}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = v
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
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
