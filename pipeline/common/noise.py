"""Telling a difference from the noise of a shared machine.

Builds compared with each other are timed in rounds, each build in turn within a round (the
order rotating), so that a machine that changes speed slows every build of a round alike.
Two builds are compared by the ratio of their medians within each round (both ran at that
round's machine speed), summarized by the median over rounds, with the sign test's interval of
that median (two order statistics of the rounds' ratios: exact, whatever the noise's
distribution, where a bootstrap over ten rounds claims more confidence than it has); a ratio
whose interval holds 1 is within noise, and is never reported as a gain or a loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# A report must not call noise a difference: at 99%, two identical builds are called
# different in fewer than one comparison in a hundred.
LEVEL = 0.99


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: ``names`` rotated by one each round, so that no build always
    runs first (after the pause) or right after the same neighbour."""
    return [names[r % len(names):] + names[: r % len(names)] for r in range(rounds)]


def spread(samples: list[float]) -> dict:
    """Median, p10 and p90 of one build's samples (ms)."""
    a = np.asarray(samples, dtype=float)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "repeats": int(a.size)}


@dataclass(frozen=True)
class Difference:
    """``a`` against ``b``: the median over rounds of the ratio of their medians in a round, and
    its interval (``level``: its actual confidence)."""

    a: str
    b: str
    ratio: float  # median(a) / median(b)
    low: float
    high: float
    level: float
    rounds: int

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    @property
    def noise(self) -> float:
        """The interval's half-width as a fraction of the ratio (the "±x%" printed)."""
        return (self.high - self.low) / 2 / self.ratio

    def as_dict(self) -> dict:
        return {**asdict(self), "within_noise": self.within_noise, "noise": self.noise}

    def sentence(self) -> str:
        """One clause: "tuned is 2.41x faster than untuned (...)" or "... within noise (±3.1%)"."""
        where = f"ratio {self.ratio:.3f}, {self.level:.1%} interval {self.low:.3f} to {self.high:.3f}"
        if self.within_noise:
            return f"{self.a} and {self.b} are equal within noise (±{self.noise:.1%}; {where})"
        if self.ratio < 1:
            speed = f"{1 / self.ratio:.2f}x faster" if self.ratio < 0.5 else f"{1 - self.ratio:.1%} faster"
        else:
            speed = f"{self.ratio:.2f}x slower" if self.ratio > 2 else f"{self.ratio - 1:.1%} slower"
        return f"{self.a} is {speed} than {self.b} ({where})"


def _order_interval(n: int, level: float) -> tuple[int, float]:
    """The k whose k-th smallest and k-th largest of ``n`` values bound their median with at
    least ``level`` confidence (the sign test's interval, exact whatever the distribution), and
    its actual confidence; k = 1 (the whole range) when ``n`` is too small for ``level``."""
    def tail(k: int) -> float:  # P(at most k - 1 of n values fall below the median)
        return sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * tail(k + 1) >= level:
        k += 1
    return k, 1 - 2 * tail(k)


def difference(name_a: str, name_b: str, a_rounds: list[list[float]], b_rounds: list[list[float]],
               level: float = LEVEL) -> Difference:
    """Build ``name_a`` against ``name_b`` from their samples per round (round r of both was
    timed together; every round has as many samples of each)."""
    if len(a_rounds) != len(b_rounds) or not a_rounds:
        raise ValueError("both builds need samples from the same rounds")
    # Each round's ratio of medians: the builds of one round ran at the same machine speed.
    ratios = np.sort(np.median(np.asarray(a_rounds, dtype=float), axis=1)
                     / np.median(np.asarray(b_rounds, dtype=float), axis=1))
    k, confidence = _order_interval(len(ratios), level)
    return Difference(name_a, name_b, float(np.median(ratios)), float(ratios[k - 1]), float(ratios[-k]),
                      confidence, len(ratios))
