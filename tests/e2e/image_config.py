"""The image base the end-to-end app serves: the tiny demo pipeline as "tiny-sd" with its LoRAs
(the wrong-base LoRA is not configured: tests register it to see it refused)."""

IMAGE_BASE = "tiny-sd"


def image_config(assets: dict) -> dict:
    """An ImageConfig dict for ``build_image_assets``'s result."""
    return {
        "name": IMAGE_BASE,
        "model": assets["base"],
        "max_adapters": 8,
        "max_mix": 3,
        "max_size": 64,
        "default_size": 32,
        "max_n": 3,
        "default_steps": 2,
        "max_steps": 8,
        "adapters": [{"name": n, **a} for n, a in assets["adapters"].items()],
        "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.3}},
    }
