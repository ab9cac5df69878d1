"""The installed tools: console scripts, the config tree shipped as aldar_lit.conf, and a non-editable wheel that
trains from a directory outside the checkout."""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from setuptools import find_packages
from setuptools.config.pyprojecttoml import read_configuration  # tomllib is Python 3.11+

from aldar_lit.cli import CONFIG_PATH
from aldar_lit.config import register_configs
from aldar_lit.config.infer import register_infer_configs
from aldar_lit.pipelines.story import find_scene_file

from conftest import REPO_ROOT

PYPROJECT = read_configuration(REPO_ROOT / "pyproject.toml", expand=False)
SCRIPTS = PYPROJECT["project"]["scripts"]
TOOLS = ["train", "infer", "evaluate", "caption", "curate"]
TINY_QUICKSTART = ["experiment=quickstart", "callbacks=none", "logger=csv", "data.resolution=32", "lora.rank=2",
                   "lora.alpha=4", "data.demo.num_images=4", "data.demo.size=64", "trainer.max_steps=2"]


def test_each_tool_has_a_console_script_calling_its_entry_point() -> None:
    assert sorted(SCRIPTS) == sorted(f"aldar-{tool}" for tool in TOOLS)
    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_the_wheel_ships_every_package_under_src_and_the_config_tree() -> None:
    """pyproject lists the packages (aldar_lit.conf is mapped from conf/, which packages.find cannot do): a package
    added under src/ and not listed would be missing from a non-editable install."""
    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    assert sorted(setuptools_cfg["packages"]) == sorted(find_packages(str(REPO_ROOT / "src")) + ["aldar_lit.conf"])
    assert setuptools_cfg["package-dir"]["aldar_lit.conf"] == "conf"


def test_the_config_tree_composes_from_the_package_and_names_each_job() -> None:
    register_configs()
    with initialize_config_module(CONFIG_PATH.removeprefix("pkg://"), version_base="1.3", job_name="not_the_tool"):
        cfg = compose("train", overrides=["experiment=quickstart"], return_hydra_config=True)
    assert cfg.hydra.job.name == "train"  # from conf/train.yaml, whatever started it (train.py, aldar-train)
    assert cfg.model.name == "tiny"


def test_the_default_story_file_is_found_beside_the_packaged_config_tree(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    register_infer_configs()
    monkeypatch.chdir(tmp_path)
    with initialize_config_module(CONFIG_PATH.removeprefix("pkg://"), version_base="1.3"):
        cfg = compose("infer", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # as in a job: load_scene_file looks beside the job's config tree
    try:
        assert find_scene_file(cfg.story.file).samefile(REPO_ROOT / "conf" / "story" / "aldar_kose.yaml")
    finally:
        HydraConfig.instance().cfg = None


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the aldar_lit wheel (built from a copy of the checkout), that sees the running venv's
    dependencies through a .pth line: a path a .pth adds is not scanned for .pth files, so the running venv's
    editable aldar_lit (its finder .pth) does not shadow the wheel."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for folder in ("src", "conf"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / file, source / file)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    [venv_site] = (venv / "lib").glob("python*/site-packages")
    (venv_site / "running_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    [wheel] = wheels.glob("aldar_lit-*.whl")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)  # nothing may read the copy of the checkout
    return venv


def test_installed_wheel_trains_the_quickstart_from_any_directory(installed_wheel: Path, tmp_path: Path,
                                                                  tiny_model_dir: Path) -> None:
    bin_dir = installed_wheel / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "offline"}
    located = subprocess.run([str(bin_dir / "python"), "-c", "import aldar_lit.conf; print(aldar_lit.conf.__file__)"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert Path(located.stdout.strip()).is_relative_to(installed_wheel), located.stderr  # the wheel, not the checkout
    shown = subprocess.run(["aldar-train", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith("Train a character LoRA on SDXL"), shown.stderr
    assert "the tools are aldar-train, aldar-infer, aldar-evaluate" in shown.stdout  # its examples say python train.py
    run_dir = tmp_path / "run"
    trained = subprocess.run(["aldar-train", *TINY_QUICKSTART, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file() and (run_dir / "summary.json").is_file()
    assert (run_dir / "train.log").is_file()  # the job is named train, as with train.py
    # its next command is the installed one, and makes a storyboard of the story shipped in the package
    command = shlex.split(trained.stdout.strip().splitlines()[-1])
    assert command[:3] == ["aldar-infer", "model=tiny", f"lora.path={run_dir / 'lora'}"]
    board_dir = tmp_path / "board"
    inferred = subprocess.run([*command, "generation.steps=1", "progress=false", f"hydra.run.dir={board_dir}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert len(list((board_dir / "frames").glob("*.png"))) == 6  # conf/story/aldar_kose.yaml's scenes
    assert shlex.split(inferred.stdout.strip().splitlines()[-1])[0] == "aldar-evaluate"
