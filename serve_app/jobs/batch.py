"""``python -m serve_app.jobs.batch --input IN.jsonl --output OUT.jsonl``: an OpenAI Batch file
(serve_app/jobs/batch_file.py) through the RUNNING app, usually submitted as a Ray job.

Every request goes through the app's ingress deployment (``Ingress.call``), so it gets the same
validation, model resolution and error table as HTTP and shares the replicas, adapter working
sets and the adapter-aware router with online traffic.

Policy:
- Lines are grouped by base and adapter (images: the adapter set) and sent group after group,
  so each adapter's requests arrive together and replicas swap adapters rarely.
- Concurrency per base: ``--concurrency`` or ``batch_share(slots)``, three quarters of the base's
  slots (``max_ongoing_requests`` x replicas): a quarter (at least one) stays free for online
  traffic, so a batch never holds every slot. A vLLM replica admits twice what its engine
  batches (serve_app/config.py), so the share keeps requests waiting inside vLLM's scheduler
  and the next batch starts as soon as one ends; they run at ``BATCH_PRIORITY``
  (serve_app/ingress.py), so online requests go ahead of that queue.
- Transient failures (a 5xx ``server_error`` or 503: a replica restarting, an actor dying, the
  ingress unreachable) are retried with exponential backoff, ``--retries`` times.
- Each answer is appended to the output and flushed as it completes; a re-run with the same
  output skips every line already answered (and says how many).
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import ids
from serve_app.errors import error_body
from serve_app.jobs.batch_file import (
    IMAGE_URL,
    BadLine,
    Request,
    answered,
    bad_line,
    read_input,
    result_line,
    save_images,
)
from serve_app.jobs.progress import Progress

logger = logging.getLogger("serve_app.jobs.batch")
UNRESOLVED = "?"  # group of lines whose model the catalogue does not know (the app answers 404)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve_app.jobs.batch", description=__doc__)
    p.add_argument("--input", required=True, type=Path, help="OpenAI Batch input (.jsonl)")
    p.add_argument("--output", required=True, type=Path, help="results, appended (.jsonl)")
    p.add_argument("--images-dir", type=Path, help="write images here as PNG, reference by path")
    p.add_argument("--config", type=Path, help="Serve config to start the app from if absent")
    p.add_argument("--app", default="loraserve", help="Serve application name")
    p.add_argument(
        "--concurrency",
        type=int,
        help="requests in flight per base (default: 3/4 of its slots, a quarter left for online)",
    )
    p.add_argument("--retries", type=int, default=4, help="retries of a transient failure")
    p.add_argument("--backoff-s", type=float, default=1.0, help="first retry delay (doubles)")
    p.add_argument("--progress-s", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LORASERVE_API_KEY"),
        help="caller's API key (default $LORASERVE_API_KEY)",
    )
    return p.parse_args(argv)


@dataclass
class Job:
    ingress: Any
    args: argparse.Namespace
    progress: Progress
    out: Any  # the output file, opened for append

    def write(self, line: dict[str, Any]) -> None:
        # NOTE: one event loop, synchronous write + flush: lines never interleave, and a killed
        # job loses nothing it reported.
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.out.flush()

    async def send(self, req: Request) -> tuple[int, dict]:
        for attempt in range(self.args.retries + 1):
            try:
                status, body = await self.ingress.call.remote(req.url, req.body, self.args.api_key)
            except Exception as e:  # the ingress itself unreachable or restarting
                status, body = (
                    503,
                    error_body(f"ingress unavailable: {e!r}"[:1000], "server_error", 503),
                )
            if not _transient(status, body) or attempt == self.args.retries:
                return status, body
            self.progress.retries += 1
            delay = min(self.args.backoff_s * 2**attempt, 30.0)
            logger.warning(
                "line %d (%s): %d, retry in %.1fs", req.line, req.custom_id, status, delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def worker(self, queue: deque[tuple[str, Request]]) -> None:
        while queue:
            group, req = queue.popleft()
            self.progress.start(group)
            t0 = time.monotonic()
            status, body = await self.send(req)
            if status == 200 and req.url == IMAGE_URL and self.args.images_dir is not None:
                body = save_images(body, req.custom_id, self.args.images_dir)
            self.write(result_line(req.line, req.custom_id, status, body))
            self.progress.finish(group, status, time.monotonic() - t0)


def batch_share(slots: int) -> int:
    """Requests a batch keeps in flight on a base with ``slots`` slots: all but a quarter (at
    least one, when there are two or more), which online traffic keeps."""
    return max(1, slots - max(1, slots // 4))


def _transient(status: int, body: dict) -> bool:
    kind = (body.get("error") or {}).get("type") if isinstance(body, dict) else None
    return status == 503 or (status >= 500 and kind == "server_error")


def group_of(req: Request, catalogue: dict[str, dict]) -> tuple[str, str]:
    """(base, group key) of a request: the adapter it runs (images: the sorted adapter set)."""
    model = req.body.get("model")
    images = [b for b, c in catalogue.items() if c["kind"] == "image"]
    if req.url == IMAGE_URL and not model and len(images) == 1:
        model = images[0]
    try:
        mid = ids.resolve(model, {b: c["adapters"] for b, c in catalogue.items()})
    except Exception:
        return UNRESOLVED, UNRESOLVED
    names = {mid.adapter} if mid.adapter else set()
    if req.url == IMAGE_URL and isinstance(req.body.get("adapters"), list):
        names |= {a.get("name") for a in req.body["adapters"] if isinstance(a, dict)}
    names.discard(None)
    return mid.base, f"{mid.base}:{'+'.join(sorted(map(str, names)))}" if names else mid.base


def plan(
    items: list[Request | BadLine], done_ids: set[str], done_lines: set[int]
) -> tuple[list[Request | BadLine], int]:
    """The items still to answer, and how many a previous run already answered."""
    todo = [
        it
        for it in items
        if not (it.custom_id in done_ids if it.custom_id is not None else it.line in done_lines)
    ]
    return todo, len(items) - len(todo)


async def run_batch(ingress: Any, args: argparse.Namespace) -> Progress:
    """Answer every unanswered line of ``args.input`` into ``args.output``."""
    items = read_input(args.input)
    done_ids, done_lines = answered(args.output)
    todo, skipped = plan(items, done_ids, done_lines)
    catalogue = await ingress.capacity.remote()
    progress = Progress(total=len(todo), skipped=skipped)
    logger.info(
        "batch: %d lines in %s, %d already answered in %s (skipped), %d to do",
        len(items),
        args.input,
        skipped,
        args.output,
        len(todo),
    )
    queues: dict[str, deque[tuple[str, Request]]] = {}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.images_dir is not None:
        args.images_dir.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as out:
        job = Job(ingress, args, progress, out)
        grouped: dict[tuple[str, str], list[Request]] = {}
        for it in todo:
            if isinstance(it, BadLine):
                progress.expect("(bad lines)")
                job.write(bad_line(it))
                progress.finish("(bad lines)", 400, 0.0, started=False)
                continue
            base, key = group_of(it, catalogue)
            grouped.setdefault((base, key), []).append(it)
            progress.expect(key)
        for (base, key), reqs in grouped.items():  # first-appearance order, each group whole
            queues.setdefault(base, deque()).extend((key, r) for r in reqs)
        workers = []
        for base, queue in queues.items():
            slots = catalogue.get(base, {}).get("slots", 8)
            n = args.concurrency or batch_share(slots)
            logger.info(
                "base %s: %d requests, %d in flight (of %d slots)", base, len(queue), n, slots
            )
            workers += [job.worker(queue) for _ in range(min(n, len(queue)))]
        reporter = asyncio.get_running_loop().create_task(_report(progress, args.progress_s))
        try:
            await asyncio.gather(*workers)
        finally:
            reporter.cancel()
    logger.info(progress.line())
    for line in progress.summary():
        logger.info(line)
    return progress


async def _report(progress: Progress, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        logger.info(progress.line())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    if not args.input.is_file():
        logger.error("no input file %s", args.input)
        return 2
    from serve_app.jobs.connect import connected_app

    with connected_app(args.app, args.config) as ingress:
        asyncio.run(run_batch(ingress, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
