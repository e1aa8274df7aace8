"""Constants shared by the crash tests (tests/test_crash.py, tests/test_fault_matrix.py)."""

SUBJECTS = ("Danube", "Volga")
# The gates are not under test here and ~60 sequential MEMIT edits of two facts wear a
# tiny model out, so only `finite`, `efficacy` and `retention` (a commit never breaks an
# applied fact) stay blocking.
OPEN_GATES = dict(efficacy_min=1.0, locality_min=0.0, kl_max=1e9, retention_min=1.0,
                  ppl_drift_max=1e9)
