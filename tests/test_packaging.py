"""A clean install: the wheel built from the repository's tracked files claims one top-level name (`idiolect`),
ships the bundled pool, prompts and CSS as package data, and its `idiolect` command starts the app (no
subcommand) or runs a headless command. `.ci/run` also installs that wheel into a fresh virtual environment and
imports a file with it, from outside the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the wheel is built from the tracked files only")
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [whl] = out.glob("idiolect-*.whl")
    return zipfile.ZipFile(whl)


def test_the_wheel_claims_one_name_and_ships_its_assets(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"idiolect"}, tops  # no top-level core/, app/, bench/, launch.py in site-packages
    packages = sorted(str(i.parent.relative_to(ROOT)) for i in ROOT.glob("[abc]*/**/__init__.py"))
    assert {"core", "app", "bench", "core/cli", "core/models/gguf"} <= set(packages)
    for package in packages:  # every subpackage ships (pyproject lists them by name)
        assert f"idiolect/{package}/__init__.py" in names, package
    assert "idiolect/launch.py" in names and "idiolect/assets/app.css" in names
    tracked_pool = sorted(p.name for p in (ROOT / "assets" / "peers" / "default").glob("*.jsonl"))
    shipped_pool = sorted(
        n.rsplit("/", 1)[1] for n in names if n.startswith("idiolect/assets/peers/default/")
    )
    assert shipped_pool == tracked_pool and tracked_pool
    assert any(n.startswith("idiolect/assets/prompts/") for n in names)
    assert not any(n.startswith("idiolect/tests/") or "/.ci/" in n for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "idiolect = idiolect.launch:console_main" in wheel.read(entry).decode()


def test_commands_do_not_load_benchmark_or_ui_code(tmp_path):
    """The headless commands import neither the benchmarks nor Gradio (only `bench` and the app do)."""
    code = (
        "import sys; from idiolect.launch import main; main(['stats', '--db', sys.argv[1]]); "
        "bad = sorted(m for m in sys.modules if m.startswith('idiolect.bench') or m.split('.')[0] == 'gradio'); "
        "print('LOADED', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.db")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
