"""What a user sees at the console: one-line errors for their own mistakes, no harmless-warning noise, and tools that
work from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

INFER_TINY = ["model=tiny", "adapters=tiny", "qa=tiny", "hydra.run.dir=run"]


def tool(script: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_infer_from_another_directory_finds_its_story_and_names_a_missing_adapter_in_one_line(tmp_path: Path) -> None:
    """The default story.file (conf/story/aldar_kose.yaml) is found beside conf/, not in the working directory, and
    an adapter error is one message, exit status 1, before any model loads."""
    result = tool("infer.py", *INFER_TINY, "lora.path=nowhere", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: lora: 'nowhere': no such directory" in result.stderr
    assert "Traceback" not in result.stderr and "story.file" not in result.stderr


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback_and_a_multirun_stops_on_the_failed_job(tmp_path: Path) -> None:
    full = tool("infer.py", *INFER_TINY, "lora.path=nowhere", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "AdapterError" in full.stderr
    sweep = tool("infer.py", "-m", *INFER_TINY[:-1], "lora.path=nowhere_a,nowhere_b", "hydra.sweep.dir=sweep",
                 cwd=tmp_path)
    assert sweep.returncode == 1 and "Traceback" not in sweep.stderr
    assert "error: lora: 'nowhere_a': no such directory" in sweep.stderr
    assert {p.name for p in (tmp_path / "sweep").iterdir()} >= {"0", "1"}  # each job ran and has its own record
