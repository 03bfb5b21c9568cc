"""``python -m serve_app.demo [DIR]``: build the demo assets (idempotent; default ``.demo``)."""

import argparse
import json
import logging
from pathlib import Path

from serve_app import env


def build_all(root: Path, images: bool = True, smollm2: bool = True) -> dict:
    from serve_app.demo.llm_assets import build_llm_assets

    out = {"llm": build_llm_assets(root)}
    if smollm2:  # the real demo base (converted once from a cached wheel; ~1 min)
        from serve_app.demo.smollm2 import build_smollm2_assets

        out["smollm2"] = build_smollm2_assets(root)
    if images:
        from serve_app.demo.image_assets import build_image_assets

        out["image"] = build_image_assets(root)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", default=env.demo_dir())
    parser.add_argument("--no-images", action="store_true", help="text assets only")
    parser.add_argument("--no-smollm2", action="store_true", help="tiny models only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = build_all(Path(args.root), images=not args.no_images, smollm2=not args.no_smollm2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
