"""``python -m serve_app.demo.train``: train the demo text adapters for SmolLM2-135M-Instruct with
PEFT and write them to ``serve_app/demo/adapters/<name>`` (standard PEFT folders; committed, so
``make run`` does not train). Deterministic: fixed seeds, fixed data (serve_app.demo.train_data),
fixed order (a rerun on the same machine and thread count should write the same numbers; CPU
threading can change the last bits elsewhere). All four take ~200 s on 2 shared cores.

Each adapter learns one behaviour a person notices (answers as a pirate, in French, as SQL, in one
short sentence) with its own rank and target modules. Loss is on the answer tokens only, and the
prompt is formatted by the model's own chat template, as the server formats a chat request.
``--measure`` then scores each adapter against the base on the held-out prompts
(serve_app.demo.effects), with Transformers' greedy generation.
"""

import argparse
import json
import logging
import random
import time
from pathlib import Path

from serve_app import env

logger = logging.getLogger("serve_app.demo.train")

OUT = Path(__file__).with_name("adapters")

# name -> (rank, target modules, epochs, learning rate)
ADAPTERS: dict[str, tuple[int, list[str], int, float]] = {
    "pirate": (8, ["q_proj", "v_proj"], 3, 2e-3),
    "french": (8, ["q_proj", "k_proj", "v_proj", "o_proj"], 4, 3e-3),
    "sql": (4, ["gate_proj", "up_proj", "down_proj"], 3, 2e-3),
    "short": (4, ["o_proj", "down_proj"], 3, 2e-3),
}
BATCH = 8
SEED = 0


def chat_prompt(tok, question: str) -> list[int]:
    """Token ids of a one-turn chat prompt, as the server's chat endpoint builds it."""
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tok(text, add_special_tokens=False).input_ids


def _batches(tok, pairs: list[tuple[str, str]], epochs: int):
    import torch

    end = "<|im_end|>"
    examples = []
    for q, a in pairs:
        p = chat_prompt(tok, q)
        ans = tok(a + end, add_special_tokens=False).input_ids
        examples.append((p + ans, [-100] * len(p) + ans))
    rng = random.Random(SEED)
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order), BATCH):
            chunk = [examples[j] for j in order[i : i + BATCH]]
            n = max(len(ids) for ids, _ in chunk)
            pad = tok.pad_token_id
            ids = torch.tensor([x + [pad] * (n - len(x)) for x, _ in chunk])
            labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in chunk])
            mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in chunk])
            yield ids, labels, mask


def train_one(model, tok, name: str, pairs, out: Path, max_steps: int | None = None):
    """Train adapter ``name`` on ``pairs``; save it under ``out/name``; return the base model."""
    import torch
    from peft import LoraConfig, get_peft_model

    rank, targets, epochs, lr = ADAPTERS[name]
    torch.manual_seed(SEED)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = epochs * -(-len(pairs) // BATCH)
    t0 = time.time()
    for step, (ids, labels, mask) in enumerate(_batches(tok, pairs, epochs), 1):
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        logger.info(
            "%s: step %d/%d loss %.3f (%.0f s)", name, step, total, loss.item(), time.time() - t0
        )
        if max_steps and step >= max_steps:
            break
    peft_model.eval()
    target = out / name
    peft_model.save_pretrained(target, safe_serialization=True)
    cfg_path = target / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = "smollm2"  # the served base id, portable across machines
    # NOTE: PEFT keeps target_modules in a set: its JSON order follows the process's hash seed.
    data["target_modules"] = sorted(data["target_modules"])
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (target / "README.md").unlink(missing_ok=True)
    logger.info("%s: saved to %s in %.0f s", name, target, time.time() - t0)
    return peft_model.unload()


def generate(model, tok, prompts: list[str], max_tokens: int = 40) -> list[tuple[str, bool]]:
    """Greedy answers ``(text, finished)`` for one-turn chats (Transformers, left-padded batch)."""
    import torch

    end = tok.convert_tokens_to_ids("<|im_end|>")
    tok.padding_side = "left"
    answers = []
    for i in range(0, len(prompts), 10):
        rows = [chat_prompt(tok, q) for q in prompts[i : i + 10]]
        n = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=end,
                pad_token_id=tok.pad_token_id,
            )
        for row in out[:, n:].tolist():
            finished = end in row
            row = row[: row.index(end)] if finished else row
            answers.append((tok.decode(row, skip_special_tokens=True), finished))
    return answers


def measure(model, tok, names: list[str], adapters: Path = OUT) -> dict[str, dict[str, float]]:
    """Each adapter (in ``adapters/<name>``) scored against the base on the held-out prompts
    (serve_app.demo.effects)."""
    from peft import PeftModel

    from serve_app.demo.effects import THRESHOLDS, score
    from serve_app.demo.train_data import HELD_OUT, SQL_HELD_OUT

    sets = {"general": HELD_OUT, "sql": SQL_HELD_OUT}
    base = {k: generate(model, tok, v) for k, v in sets.items()}
    result = {}
    for name in names:
        kind = THRESHOLDS[name][0]
        peft_model = PeftModel.from_pretrained(model, adapters / name).eval()
        answers = generate(peft_model, tok, sets[kind])
        model = peft_model.unload()
        result[name] = {"adapter": score(name, answers), "base": score(name, base[kind])}
        logger.info("%s: %s; e.g. %r", name, result[name], answers[0][0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(ADAPTERS), help="adapters to train")
    parser.add_argument("--demo-dir", default=env.demo_dir(), help="where the base is built")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (timing runs)")
    parser.add_argument("--measure", action="store_true", help="score adapters vs the base")
    parser.add_argument("--no-train", action="store_true", help="only --measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve_app.demo.smollm2 import build_smollm2_assets
    from serve_app.demo.train_data import datasets

    torch.manual_seed(SEED)
    base = build_smollm2_assets(Path(args.demo_dir))["base"]
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    data = datasets()
    t0 = time.time()
    if not args.no_train:
        for name in args.names:
            model = train_one(model, tok, name, data[name], Path(args.out), args.max_steps)
        logger.info("trained %s in %.0f s", ", ".join(args.names), time.time() - t0)
    if args.measure:
        print(json.dumps(measure(model.eval(), tok, args.names, Path(args.out)), indent=2))


if __name__ == "__main__":
    main()
