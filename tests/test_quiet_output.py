"""A real package (issue 21), quiet output: library logging and progress bars, warnings,
--quiet and --verbose.

CPU only, tiny random Llama (tests/kbproject.py)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from kbproject import cli
from kbsync import output
from ux_fixtures import _normal_verbosity  # noqa: F401  (autouse)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def library_logging():
    """Put transformers' and huggingface_hub's logging and progress bars back afterwards,
    so a test that silences them leaves the next test as it found it."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
              hub_logging.get_verbosity(), are_progress_bars_disabled())
    yield hf_logging, hub_logging
    hf_logging.set_verbosity(before[0])
    (hf_logging.enable_progress_bar if before[1] else hf_logging.disable_progress_bar)()
    hub_logging.set_verbosity(before[2])
    if not before[3]:
        enable_progress_bars()
    output.set_verbosity(output.NORMAL)


# ------------------------------------------------------------------ (a) quiet output

def test_loading_a_model_silences_transformers_and_hub(tiny_llama_dir, library_logging, capfd):
    import logging

    from huggingface_hub.utils import are_progress_bars_disabled

    from kbsync.lm.load import load_model

    hf_logging, hub_logging = library_logging
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_model(tiny_llama_dir, device="cpu")
    assert hf_logging.get_verbosity() == logging.ERROR
    assert hub_logging.get_verbosity() == logging.ERROR
    assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err


def test_verbose_leaves_library_logging_alone(tiny_llama_dir, library_logging):
    import logging

    from kbsync.lm.load import load_model

    hf_logging, _ = library_logging
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    output.set_verbosity(output.VERBOSE)
    load_model(tiny_llama_dir, device="cpu")
    assert hf_logging.get_verbosity() == logging.WARNING and hf_logging.is_progress_bar_enabled()


def test_importing_kbsync_touches_no_library_logging():
    """Silencing happens when a model loads, not at import (a fresh process: importing
    kbsync's modules leaves transformers' defaults)."""
    import subprocess
    import sys

    code = ("import kbsync.cli.main, kbsync.history, kbsync.lm.load, "
            "kbsync.editing.prefix\n"
            "from transformers.utils import logging as l\n"
            "print(l.get_verbosity(), l.is_progress_bar_enabled())")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", "True"]          # logging.WARNING, bars on


def test_prefix_cache_passes_the_cache_by_the_name_transformers_takes():
    """kbsync/editing/prefix.py: `cache=` where the model's forward takes it (transformers
    5.x), so no `past_key_values is deprecated` FutureWarning."""
    import inspect

    import torch

    from kbsync.editing.prefix import PrefixRunner, cache_keyword, split_at_subject
    from kbsync.editing.request import EditSpec
    from kbsync.editing.targets import _rows
    from kbsync.lm.tokens import encode
    from kbsync.testing import tiny_model

    lm = tiny_model("llama")
    params = inspect.signature(type(lm.model.base_model).forward).parameters
    assert cache_keyword(lm.model.base_model) == ("cache" if "cache" in params
                                                  else "past_key_values")
    spec = EditSpec("The river {subject}", "Danube", "American")
    split = split_at_subject(encode(lm.tokenizer, *_rows([spec], ["{}", "One two. {}"])[:3]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            PrefixRunner(lm.model, split)()
    assert not [w for w in caught if "past_key_values" in str(w.message)], \
        [str(w.message) for w in caught]


def test_pytest_turns_warnings_from_kbsync_into_errors(pytestconfig):
    filters = pytestconfig.getini("filterwarnings")
    assert any(f.startswith("error:::kbsync") for f in filters), filters
    with pytest.raises(UserWarning, match="from kbsync"):
        warnings.warn_explicit("from kbsync", UserWarning, "load.py", 1, module="kbsync.lm.load")
    with pytest.raises(FutureWarning):
        warnings.warn("`past_key_values` is deprecated and will be removed", FutureWarning)


def test_quiet_and_verbose_are_global_options(tmp_path):
    assert cli(tmp_path, "--quiet", "--verbose", "editors").exit_code == 2
    assert cli(tmp_path, "--quiet", "editors").exit_code == 0
    assert output.verbosity() == output.QUIET
    assert cli(tmp_path, "editors").exit_code == 0          # each invocation sets it afresh
    assert output.verbosity() == output.NORMAL
    assert cli(tmp_path, "-v", "editors").exit_code == 0 and output.verbosity() == output.VERBOSE
    assert "--quiet" in cli(tmp_path, "--help").stdout


def _apply_events() -> list[dict]:
    return [{"type": "edits", "known": 1, "skipped": 0, "total": 2},
            {"type": "batch_start", "batch": 1, "size": 2, "keys": ["a", "b"]},
            {"type": "gates", "batch": 1, "checks": [{"metric": "efficacy", "passed": False}]},
            {"type": "rejected", "key": "a/R1", "failed": ["efficacy"]},
            {"type": "commit", "snapshot": "ab" * 32, "serial": 1, "edits": 1},
            {"type": "recovered", "run_id": "20261203T062915Z-1a2b3c4d"},
            {"type": "summary"}]


@pytest.mark.parametrize("level", [output.NORMAL, output.QUIET])
def test_quiet_hides_progress_lines_and_bars_but_not_rejections(level, capsys, monkeypatch):
    import tqdm

    from kbsync.cli.printers import event_printer, refresh_progress

    bars = []
    monkeypatch.setattr(tqdm, "tqdm", lambda *a, **k: bars.append(k) or _NoBar())
    output.set_verbosity(level)
    emit = event_printer(False)
    for event in _apply_events():
        emit(event)
    refresh_progress()(1, 2)
    err = capsys.readouterr().err
    assert "rejected a/R1: gates failed (efficacy)" in err
    assert "recorded interrupted run 20261203T062915Z-1a2b3c4d" in err   # the whole id
    if level == output.QUIET:
        assert "batch 1" not in err and "committed snapshot" not in err and not bars
    else:
        assert "batch 1: editing 2 fact(s)" in err and "committed snapshot" in err
        assert [b["desc"] for b in bars] == ["edits", "refresh"]


class _NoBar:
    """A drawn-nowhere bar: lines written "above" it still reach the stream, as tqdm's do."""

    n = 0

    def update(self, n=1):
        self.n += n

    def write(self, text, file=None):
        print(text, file=file)

    def close(self):
        pass
