"""The capacity budget (kbsync.evaluate.capacity) and its CLI warning line."""

from __future__ import annotations

import pytest

from kbsync.cli.printers import capacity_warning
from kbsync.evaluate.capacity import ADVICE, capacity


def test_budget_spent_and_the_facts_left_at_the_rate_so_far():
    cap = capacity(100, {"ppl_drift": (0.05, 0.1), "general_knowledge": (0.96, 0.9),
                         "efficacy": (1.0, 0.9)}, pending=50)
    budgets = {b.metric: b for b in cap.budgets}
    assert set(budgets) == {"ppl_drift", "general_knowledge"}     # the cumulative gates only
    assert budgets["ppl_drift"].spent == 0.05 and budgets["ppl_drift"].facts_left == 100
    # 0.04 of 0.1 spent by 100 facts: 0.06 left at 0.0004 a fact
    assert budgets["general_knowledge"].facts_left == 150
    assert cap.facts_left == 100 and not cap.warn
    assert cap.to_dict()["advice"] is None


@pytest.mark.parametrize("drift, pending, warn", [
    (0.095, 0, True),        # 5% of the drift budget left: below the 10% margin
    (0.08, 30, True),        # 25 facts left at the rate so far, 30 still planned
    (0.08, 20, False),
])
def test_warns_before_the_wall(drift, pending, warn):
    cap = capacity(100, {"ppl_drift": (drift, 0.1)}, pending=pending)
    assert cap.warn is warn
    if warn:
        assert cap.to_dict()["advice"] == ADVICE and "kbsync rebase" in ADVICE


def test_no_projection_without_spend():
    cap = capacity(40, {"ppl_drift": (-0.02, 0.1), "general_knowledge": (1.0, 0.9)}, pending=10**6)
    assert cap.facts_left is None and not cap.warn
    assert [b.spent for b in cap.budgets] == [0.0, 0.0]


def test_the_cli_line_says_what_is_spent_and_what_to_do():
    line = capacity_warning(capacity(100, {"ppl_drift": (0.095, 0.1)}, pending=7).to_dict())
    assert line.startswith("warning: capacity: ppl_drift 0.095 of 0.1 spent")
    assert "about 5 more fact(s)" in line and "7 still to edit" in line
    assert "kbsync rebase" in line and "grace" in line


def test_apply_reports_the_budget_and_warns_once(tmp_path, tiny_llama_dir, monkeypatch):
    """Every commit emits the budget; a low one is printed once as a warning and kept in
    the ledger once. WARN_SHARE above 1 makes any budget low (a tiny model's drift is
    noise, no threshold of it is a steady test)."""
    import kbsync.evaluate.capacity as capacity_module
    from kbproject import cli, make_project
    from kbsync.store.ledger import Ledger

    monkeypatch.setattr(capacity_module, "WARN_SHARE", 1.01)
    project = make_project(tmp_path / "proj", tiny_llama_dir, batch_size=2)
    result = cli(project, "apply", "--auto-approve")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("warning: capacity:") == 1 and "kbsync rebase" in result.stderr

    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        warnings = [e["detail"] for e in ledger.rows("events") if e["kind"] == "capacity_warning"]
    assert len(warnings) == 1                       # after the first of the two batches
    assert warnings[0]["facts"] == 2 and warnings[0]["pending"] == 2
    assert {b["metric"] for b in warnings[0]["budgets"]} == {"ppl_drift", "general_knowledge"}
