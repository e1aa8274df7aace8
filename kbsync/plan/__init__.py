"""Planning: fact-level diff, the Plan file format, and facts at a git revision."""

from kbsync.plan.diff import apply_diff, diff
from kbsync.plan.gitrev import facts_at_revision, git_info
from kbsync.plan.plan import FORMAT_VERSION, EditRequest, Plan

__all__ = ["diff", "apply_diff", "EditRequest", "Plan", "FORMAT_VERSION", "git_info",
           "facts_at_revision"]
