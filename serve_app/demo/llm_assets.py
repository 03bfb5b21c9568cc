"""A tiny Llama that vLLM's CPU build runs (head_dim 64), its byte-level BPE tokenizer with a chat
template, and PEFT LoRA adapters of different ranks and target modules that change its outputs.
"""

import json
from pathlib import Path

MARKER = "llm-assets.json"
BASE_ID = "tiny-llama"

# name -> (rank, target modules); every adapter changes the output, each in its own way.
ADAPTERS: dict[str, tuple[int, list[str]]] = {
    "sql": (4, ["q_proj", "v_proj"]),
    "poet": (8, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "chef": (16, ["gate_proj", "up_proj", "down_proj"]),
    "pirate": (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serve many small adapters on one base model.",
    "SELECT name FROM users WHERE id = 42;",
    "Roses are red, violets are blue, adapters are small and so are you.",
    "Preheat the oven, whisk two eggs with flour and sugar.",
    "Ahoy matey, hoist the sails and find the treasure!",
    "Ray Serve routes requests to replicas; vLLM batches them.",
    "Hello, how are you today? I am fine, thank you.",
] * 8


def build_llm_assets(root: Path) -> dict:
    """Build (once) base model, tokenizer and adapters under ``root/llm``; return their paths."""
    out = Path(root) / "llm"
    marker = out / MARKER
    if marker.exists():
        return json.loads(marker.read_text())
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base_dir = out / "base"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base_dir)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        initializer_range=0.05,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(base_dir, safe_serialization=True)

    adapters = {}
    for i, (name, (rank, targets)) in enumerate(ADAPTERS.items()):
        torch.manual_seed(100 + i)
        lora = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=targets,
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(LlamaForCausalLM(config), lora)
        peft_model.base_model.model.load_state_dict(model.state_dict(), strict=False)
        adir = out / "adapters" / name
        peft_model.save_pretrained(adir, safe_serialization=True)
        # Name the base by its served id (portable across machines, like a hub id).
        cfg_path = adir / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = BASE_ID
        cfg_path.write_text(json.dumps(cfg, indent=2))
        adapters[name] = str(adir.resolve())

    info = {"base_id": BASE_ID, "base": str(base_dir.resolve()), "adapters": adapters}
    marker.write_text(json.dumps(info, indent=2))
    return info
