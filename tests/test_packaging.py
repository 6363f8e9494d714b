"""Packaging: what a Python started in the repository root imports, and what the wheel holds.

``kernels/`` is installed as ``upo_fast.kernels`` and must never shadow the PyPI package ``kernels`` (Hugging Face's
kernel hub, imported by ``transformers.modeling_utils`` from 5.25 on) for ``python -m``, ``python -c``, pytest or a
notebook started in the root, where the root comes first on ``sys.path``. A wheel built from the tree must hold every
package and shipped asset, so that ``upo-fast lm-eval`` and the shipped models work outside an editable install.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in the repository root, where '' (the current folder) is sys.path[0], as for `python -m` and notebooks.
_IMPORTS_FROM_ROOT = """
import json, sys
import transformers.modeling_utils
import upo_fast, upo_fast.ops
import upo_fast.kernels.vocab_stats as vocab_stats
found = {"kernels_module": vocab_stats.__file__, "path0": sys.path[0]}
try:
    import kernels
    found["kernels"] = getattr(kernels, "__file__", None) or list(kernels.__path__)
except ImportError as error:
    found["kernels"] = None
print(json.dumps(found))
"""


def _pypi_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_kernels_folder_is_a_namespace_portion():
    # An __init__.py would make the folder a regular package, which wins over site-packages from the root.
    assert not (ROOT / "kernels" / "__init__.py").exists(), \
        "kernels/ must not have an __init__.py (it would shadow the PyPI package `kernels`; see CONTRIBUTING.md)"
    link = ROOT / "upo_fast" / "kernels"
    assert link.is_symlink() and link.resolve() == (ROOT / "kernels").resolve(), \
        "upo_fast/kernels must be a symlink to ../kernels (how setuptools installs the folder as upo_fast.kernels)"


@pytest.mark.parametrize("how", ["-c", "script"])
def test_python_started_in_the_root_imports_transformers_and_upo_fast(how, tmp_path):
    if how == "-c":
        command = [sys.executable, "-c", _IMPORTS_FROM_ROOT]
    else:  # a script in the root puts the root itself (not '') first, as `python some_script.py` would
        script = ROOT / f"_packaging_probe_{tmp_path.name}.py"
        script.write_text(_IMPORTS_FROM_ROOT)
        command = [sys.executable, str(script)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        if how == "script":
            script.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["kernels_module"]).resolve() == (ROOT / "kernels" / "vocab_stats.py").resolve() or \
        "site-packages" in found["kernels_module"]
    if _pypi_kernels_installed():
        where = found["kernels"]
        assert isinstance(where, str) and "site-packages" in where and \
            not Path(where).resolve().is_relative_to((ROOT / "kernels").resolve()), \
            f"`import kernels` in the repository root gave {where}, not the installed PyPI package"


def _tracked_files(*folders: str) -> dict[str, bool]:
    """{path: is a symlink} of the files git tracks (and would clone) under ``folders``."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is checked against the tracked files)")
    listed = subprocess.run(["git", "ls-files", "-s", *folders], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    return {line.split("\t", 1)[1]: line.startswith("120000") for line in listed}


def _copy_of_the_clone(into: Path) -> Path:
    """The tracked files, symlinks kept, in a fresh folder: a build there cannot reuse a stale build/ folder."""
    tree = into / "tree"
    for path, is_link in _tracked_files(".").items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        if is_link:
            (tree / path).symlink_to((ROOT / path).readlink())
        elif (ROOT / path).exists():  # deleted but not yet committed
            shutil.copy2(ROOT / path, tree / path)
    return tree


@pytest.mark.slow
def test_wheel_holds_every_package_and_asset(tmp_path):
    tree = _copy_of_the_clone(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(tree)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "Could not find a version that satisfies" in done.stderr:
        pytest.skip("pip cannot fetch the build backend here (no package index)")
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(tmp_path.glob("upo_fast-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # upo_fast/kernels is a symlink to kernels/: its files are listed under kernels/
    expected = [path.replace("kernels/", "upo_fast/kernels/", 1) if path.startswith("kernels/") else path
                for path, is_link in _tracked_files("upo_fast", "kernels").items() if not is_link]
    missing = sorted(path for path in expected if path not in names)
    assert not missing, f"{wheel.name} lacks files of the tree (find packages in setup.py, add package_data): {missing}"
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"upo_fast"}, f"the wheel installs top-level names other than upo_fast: {top_level}"


def _package_data(package: str) -> list[str]:
    """The globs ``setup.py`` gives ``package`` in ``package_data`` (read from its source: running setup.py
    would build)."""
    import ast

    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "package_data" and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == package:
                    return ast.literal_eval(value)
    return []


def test_lm_eval_task_folders_are_in_the_wheel():
    """Every file of the shipped lm-eval task folders (``upo-fast lm-eval --tasks arith`` reads them from the
    installed package) is a module of a package (a folder with ``__init__.py``) or matches setup.py's
    package_data; the wheel test checks the same once the files are committed."""
    from fnmatch import fnmatch

    package = ROOT / "upo_fast" / "integrations" / "lm_eval_tasks"
    globs = _package_data("upo_fast.integrations.lm_eval_tasks")
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.suffix == ".yaml" for p in files), "no task YAML under upo_fast/integrations/lm_eval_tasks"
    for path in files:
        relative = path.relative_to(package).as_posix()
        if path.suffix == ".py":
            assert (path.parent / "__init__.py").is_file(), f"{relative}: its folder needs an __init__.py"
        else:
            assert any(fnmatch(relative, glob) for glob in globs), \
                f"{relative} is not package data: add it to setup.py's package_data (globs: {globs})"
