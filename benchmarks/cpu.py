"""CPU seconds by process role, for a server and everything it started (Ray's workers, vLLM's
engine cores): where a benchmark's machine time goes."""

import re
from pathlib import Path

import psutil


def _label(proc: psutil.Process) -> str:
    """A process's role: Ray's and vLLM's process titles (``ray::ServeReplica:app:Ingress``,
    ``VLLM::EngineCore``), else the program name."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    title = cmd[0] if cmd else proc.name()
    if "-m" in cmd[:3]:  # python -m module: the module
        return cmd[cmd.index("-m") + 1]
    if "::" in title:
        return re.sub(r"\.[a-z_]+$", "", title.split()[0])  # Ray appends the running method
    for arg in cmd[:3]:
        name = Path(arg).name
        if arg.startswith("-") or name in ("python", "python3") or name.startswith("python3."):
            continue
        return name
    return proc.name()


def cpu_tree(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (role, CPU seconds so far)} for ``root`` and all its descendants."""
    out = {}
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = (_label(proc), t.user + t.system)
        except psutil.Error:
            continue
    return out


def cpu_per_request(before: dict, after: dict, n: int) -> dict[str, float]:
    """CPU ms per request by role between two ``cpu_tree`` snapshots, largest first."""
    by: dict[str, float] = {}
    for pid, (label, t) in after.items():
        by[label] = by.get(label, 0.0) + t - before.get(pid, (label, 0.0))[1]
    ms = {k: 1000 * v / n for k, v in by.items() if v > 0}
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))
