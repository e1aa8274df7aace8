"""The verbosity reset every package-UX test file uses (tests/test_quiet_output.py,
tests/test_log_ask_cli.py, tests/test_datasette.py)."""

import pytest

from kbsync import output


@pytest.fixture(autouse=True)
def _normal_verbosity():
    output.set_verbosity(output.NORMAL)
    yield
    output.set_verbosity(output.NORMAL)
