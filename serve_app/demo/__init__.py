"""Deterministic tiny demo assets built offline: a tiny Llama with LoRA adapters, and a tiny
Stable Diffusion pipeline with LoRAs. ``python -m serve_app.demo`` builds them; tests reuse them.
"""
