"""The layered import order of pyproject.toml's [tool.importlinter] holds, and the check catches a break of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(source_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` as .ci/run runs it, on the `aldar_lit` found under `source_root`."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run([LINT_IMPORTS, str(REPO_ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_layers(tmp_path) -> None:
    result = lint_imports(REPO_ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, extra_import, message", [
    # a lower layer reaching up (quality imported pipelines before the keypoint schema moved)
    ("quality/keypoints.py", "import aldar_lit.pipelines.poses",
     "aldar_lit.quality is not allowed to import aldar_lit.pipelines"),
    # two packages of one layer importing each other (data.caches already imports models.conditioning)
    ("models/conditioning.py", "import aldar_lit.data.buckets", "No cycles are allowed in aldar_lit."),
])
def test_the_check_fails_on_an_upward_import_or_a_cycle(tmp_path, module, extra_import, message) -> None:
    copy = tmp_path / "src" / "aldar_lit"
    shutil.copytree(REPO_ROOT / "src" / "aldar_lit", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{extra_import}\n")
    result = lint_imports(tmp_path / "src", tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in " ".join(result.stdout.split()), result.stdout
