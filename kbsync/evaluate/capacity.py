"""The capacity budget: how much of the cumulative gates a knowledge base has spent, and
how many more facts fit at the rate so far.

Two gates measure damage against the BASE model (or the last rebase: kbsync/rebase.py),
so their value grows with the facts committed since: `ppl_drift` (spent = drift, budget =
ppl_drift_max) and `general_knowledge` (spent = 1 - share kept, budget = 1 - its minimum).
Both start at 0 spent at the reference, so the rate is linear through the origin: spent /
facts so far. The projection is rough (drift grows faster near the wall, issue 22) and
errs late, hence the warning margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

WARN_SHARE = 0.1       # warn when less than this share of a budget is left
ADVICE = ("accept the model as it is as the new reference with `kbsync rebase` (the budget "
          "starts again from HEAD), switch editor, or use a side-memory editor such as "
          "grace or wise (retry.fallback_editor)")


@dataclass(frozen=True)
class Budget:
    metric: str
    spent: float
    budget: float
    facts_left: int | None        # None: nothing spent yet, no rate to project from

    @property
    def left_share(self) -> float:
        return max(self.budget - self.spent, 0.0) / self.budget if self.budget > 0 else 0.0


@dataclass(frozen=True)
class Capacity:
    facts: int                    # facts committed so far (the applied state)
    pending: int                  # facts the plan still has to edit
    budgets: list[Budget] = field(default_factory=list)

    @property
    def facts_left(self) -> int | None:
        known = [b.facts_left for b in self.budgets if b.facts_left is not None]
        return min(known) if known else None

    @property
    def spent(self) -> bool:
        """A budget is nearly spent: the wall is one batch or so away (issue 22 measured
        AlphaEdit's last 10 % of the drift budget go in about 30 facts)."""
        return any(b.left_share < WARN_SHARE for b in self.budgets)

    @property
    def warn(self) -> bool:
        return self.spent or (self.facts_left is not None and self.facts_left < self.pending)

    def to_dict(self) -> dict:
        return {"facts": self.facts, "pending": self.pending, "facts_left": self.facts_left,
                "spent": self.spent, "warn": self.warn, "advice": ADVICE if self.warn else None,
                "budgets": [asdict(b) | {"left_share": b.left_share} for b in self.budgets]}


def spent_of(metric: str, value: float, threshold: float) -> tuple[float, float] | None:
    """(spent, budget) of a cumulative gate's value, or None for the other gates."""
    if metric == "ppl_drift":
        return max(value, 0.0), threshold
    if metric == "general_knowledge":
        return 1.0 - value, 1.0 - threshold
    return None


def capacity(facts: int, gates: dict[str, tuple[float, float]], pending: int = 0) -> Capacity:
    """`gates`: metric -> (value, threshold) of the last committed snapshot."""
    budgets = []
    for metric, (value, threshold) in gates.items():
        pair = spent_of(metric, value, threshold)
        if pair is None:
            continue
        spent, budget = pair
        left = None
        if spent > 0 and facts > 0:
            # floor, but not one fact short for the float error of 1 - 0.96
            left = max(math.floor((budget - spent) / (spent / facts) + 1e-9), 0)
        budgets.append(Budget(metric, spent, budget, left))
    return Capacity(facts, pending, budgets)


def recorded(gates: dict[str, dict], config) -> dict[str, tuple[float, float]]:
    """The cumulative gates' values a manifest recorded (metric -> {value, ...}) against
    the thresholds of `config` (kbsync.yaml's gates now, which may have moved since), as
    `capacity` takes them."""
    limits = {"ppl_drift": config.ppl_drift_max,
              "general_knowledge": config.general_knowledge_min}
    return {m: (g["value"], limits[m]) for m, g in gates.items()
            if m in limits and isinstance(g.get("value"), (int, float))}
