"""Batch work submitted as Ray jobs: ``python -m serve_app.jobs.batch`` (OpenAI Batch files)."""
