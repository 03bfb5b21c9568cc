"""Shared by the cluster tests (several Ray nodes on this machine, one cluster per module): the
demo assets and an app config on the Transformers+PEFT engine (starts in seconds, so replicas
come and go quickly), and a counting HTTP load generator."""

import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

BASE = "tiny-llama"
ADAPTERS = ["sql", "poet", "chef", "pirate"]


@pytest.fixture(scope="session")
def demo_assets() -> dict:
    from serve_app.demo.__main__ import build_all

    return build_all(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")), images=False)


def app_config(assets: dict, deployment: dict, max_loras: int = 2) -> dict:
    llm = assets["llm"]
    return {
        "sources": {"allowed_roots": [str(Path(llm["base"]).parents[1])]},
        "llm": [
            {
                "name": BASE,
                "model": llm["base"],
                "engine": "peft",
                "dtype": "float32",
                "max_model_len": 256,
                "max_loras": max_loras,
                "adapters": [{"name": n, "source": p} for n, p in llm["adapters"].items()],
                "deployment": deployment,
            }
        ],
    }


def wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            r = httpx.post(
                f"{url}/v1/completions",
                json={"model": BASE, "prompt": "hi", "max_tokens": 1},
                timeout=10,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("app did not become ready")


class Load:
    """Closed-loop HTTP clients sending completions for the demo adapters in turn; ``clients``
    can change while it runs. Every request ends as exactly one of: answered (200), errored (a
    status >= 400 with an OpenAI-style error body), broken (any other reply or a connection
    error), hung (no reply within ``timeout_s``). Each outcome is logged with its time."""

    def __init__(self, url: str, clients: int = 2, timeout_s: float = 60, max_tokens: int = 8):
        self.url, self.timeout_s, self.max_tokens = url, timeout_s, max_tokens
        self.clients = clients
        self.events: list[tuple[float, str, int]] = []  # (time, outcome, status)
        self.errors: Counter = Counter()  # (status, error message) of error replies
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0

    def __enter__(self) -> "Load":
        for i in range(8):  # at most 8 clients; those with i >= self.clients idle
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def _run(self, i: int) -> None:
        n = i
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                if i >= self.clients:
                    time.sleep(0.1)
                    continue
                n += 1
                model = f"{BASE}:{ADAPTERS[n % len(ADAPTERS)]}"
                with self._lock:
                    self._sent += 1
                outcome, status = self._one(client, model)
                with self._lock:
                    self.events.append((time.time(), outcome, status))

    def _one(self, client: httpx.Client, model: str) -> tuple[str, int]:
        body = {"model": model, "prompt": "Hello", "max_tokens": self.max_tokens}
        try:
            r = client.post("/v1/completions", json=body)
        except httpx.TimeoutException:
            return "hung", 0
        except httpx.HTTPError:
            return "broken", 0
        if r.status_code == 200 and r.json()["choices"][0]["text"] is not None:
            return "answered", 200
        try:
            message = r.json()["error"]["message"]
            ok_error = r.status_code >= 400 and isinstance(message, str)
        except Exception:
            message, ok_error = r.text[:200], False
        with self._lock:
            self.errors[(r.status_code, message[:120])] += 1
        return ("errored" if ok_error else "broken"), r.status_code

    def counts(self, since: float = 0.0) -> Counter:
        with self._lock:
            c = Counter(o for t, o, _ in self.events if t >= since)
            if since == 0.0:
                c["sent"] = self._sent
        return c
