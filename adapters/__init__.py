"""Adapter lifecycle: ids, specs, validation, sources, caches and the per-replica pool.

Pure Python; imports nothing from serve_app and nothing heavy at import time.
"""
