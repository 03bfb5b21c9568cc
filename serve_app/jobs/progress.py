"""Progress of a batch job in its log (what ``ray job logs --follow`` shows): a bar with done /
total, errors, requests per second and the adapters in flight, every few seconds; a summary
per adapter at the end. Pure bookkeeping: the caller logs the strings.
"""

import time
from collections import Counter
from dataclasses import dataclass, field

BAR = 24


@dataclass
class _Group:
    total: int = 0
    done: int = 0
    errors: int = 0
    in_flight: int = 0
    busy_s: float = 0.0


@dataclass
class Progress:
    total: int
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    groups: dict[str, _Group] = field(default_factory=dict)
    codes: Counter = field(default_factory=Counter)
    retries: int = 0

    def expect(self, group: str) -> None:
        self.groups.setdefault(group, _Group()).total += 1

    def start(self, group: str) -> None:
        self.groups[group].in_flight += 1

    def finish(self, group: str, status: int, latency_s: float, started: bool = True) -> None:
        g = self.groups[group]
        g.done += 1
        g.in_flight -= started
        g.busy_s += latency_s
        self.codes[status] += 1
        if status != 200:
            g.errors += 1

    @property
    def done(self) -> int:
        return sum(g.done for g in self.groups.values())

    @property
    def errors(self) -> int:
        return sum(g.errors for g in self.groups.values())

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        done, total = self.done, self.total
        frac = done / total if total else 1.0
        bar = "#" * int(frac * BAR) + "." * (BAR - int(frac * BAR))
        rate = self.rate()
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else "-"
        active = [
            f"{k} {g.done}/{g.total}" for k, g in self.groups.items() if g.in_flight and g.total
        ]
        return (
            f"[{bar}] {done}/{total} {frac:.0%} | errors {self.errors} | {rate:.2f} req/s | "
            f"eta {eta} | in flight: {', '.join(active) or '-'}"
        )

    def summary(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.codes.items()))
        out = [
            f"batch done: {self.done} answered ({codes or 'none'}), {self.errors} errors, "
            f"{self.skipped} skipped (already in the output), {self.retries} retries, "
            f"{elapsed:.1f}s, {self.rate():.2f} req/s",
            f"{'adapter':<40} {'done':>6} {'errors':>6} {'mean s':>7}",
        ]
        for k, g in sorted(self.groups.items()):
            mean = g.busy_s / g.done if g.done else 0.0
            out.append(f"{k:<40} {g.done:>6} {g.errors:>6} {mean:>7.2f}")
        return out
