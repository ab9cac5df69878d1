"""The README's shell commands as a user types them.

Every command of a ```bash block is parsed. Each one of the project's tools composes into a valid config (the
hub-model and SLURM ones only that: they cannot run offline). The offline ones run in a temporary directory,
with the CPU settings the README gives for them: the quickstart, its resume, inference and evaluation on its
adapter, a sweep, and dataset preparation (curate, then caption against a local OpenAI-compatible server).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from aldar_lit.config import register_configs, to_schema, to_train_config
from aldar_lit.offline.demo_character import generate_demo_dataset
from aldar_lit.config.prep import CaptionConfig, CurateConfig, register_prep_configs
from aldar_lit.config.evaluate import register_evaluate_configs, to_eval_config
from aldar_lit.config.infer import register_infer_configs, to_infer_config
from conftest import REPO_ROOT
from fixtures_openai import serve  # noqa: F401

README = REPO_ROOT / "README.md"
# README lines that are not one of the tools: the set-ups, the test suite itself, and where the key comes from
NOT_TOOLS = ("python -m venv ", "pip install ", "python -m pytest", "export OPENAI_API_KEY=")
SECRET = "sk-readme-test-0123456789"


@dataclass(frozen=True)
class Tool:
    launch: tuple[str, ...]  # how the README starts it, after `python`
    register: Callable[[], None]
    validate: Callable
    has_paths: bool = True  # its config has `paths.output_dir` (which Hydra fills in only in a real run)


TOOLS = {
    "train": Tool((str(REPO_ROOT / "train.py"),), register_configs, to_train_config),
    "infer": Tool((str(REPO_ROOT / "infer.py"),), register_infer_configs, to_infer_config),
    "evaluate": Tool((str(REPO_ROOT / "evaluate.py"),), register_evaluate_configs, to_eval_config),
    "caption": Tool(("-m", "aldar_lit.caption"), register_prep_configs,
                    lambda cfg: to_schema(cfg, CaptionConfig, "caption_schema"), has_paths=False),
    "curate": Tool(("-m", "aldar_lit.curate"), register_prep_configs,
                   lambda cfg: to_schema(cfg, CurateConfig, "curate_schema"), has_paths=False),
}


@dataclass(frozen=True)
class Command:
    line: str  # its words as the shell splits them, joined by spaces (continuation lines joined, comment dropped)
    tool: str
    args: tuple[str, ...]  # the tool's arguments, as the shell passes them

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args if a not in ("-m", "--multirun")]


def tool_of(words: list[str]) -> tuple[str, int] | None:
    """The tool a command line starts (`python train.py`, `srun python train.py`, `python -m aldar_lit.caption`,
    `torchrun ... train.py`, the installed `aldar-train`) and the index of its first argument."""
    for index, word in enumerate(words):
        name = word.removesuffix(".py").removeprefix("aldar_lit.").removeprefix("aldar-")
        if name in TOOLS and (word.endswith(".py") or word.startswith(("aldar_lit.", "aldar-"))):
            return name, index + 1
    return None


def readme_commands() -> list[Command]:
    """Every command of the README's bash blocks that starts a tool. A bare `...` as its first argument stands for
    the arguments of the tool's previous command (`python evaluate.py ... frames_from=[...]`)."""
    commands: list[Command] = []
    for block in re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            found = tool_of(words)
            if found is None:
                assert line.startswith(NOT_TOOLS), f"a README command of an unknown kind: {line}"
                continue
            tool, start = found
            args = words[start:]
            if args[:1] == ["..."]:
                args = [*next(c for c in reversed(commands) if c.tool == tool).args, *args[1:]]
            commands.append(Command(" ".join(words), tool, tuple(args)))
    return commands


COMMANDS = readme_commands()


def readme_command(pattern: str) -> Command:
    """The one README command whose line matches `pattern` (a regex)."""
    [command] = [c for c in COMMANDS if re.search(pattern, c.line)]
    return command


def fill_placeholders(args: list[str], run: str, data: Path) -> list[str]:
    """The README's placeholders made concrete: `<run>` -> `run`, `key=...` and `/path/to/x` -> folders under
    `data`, `$SLURM_JOB_ID` -> a job number; a bare `...` (more arguments) is dropped."""
    filled = []
    for arg in args:
        if arg == "...":
            continue
        arg = arg.replace("<run>", run).replace("$SLURM_JOB_ID", "1234").replace("/path/to/", f"{data}/")
        arg = re.sub(r"<(\w+)>", r"\1", arg)
        filled.append(re.sub(r"=\.\.\.$", f"={data}/images", arg))
    return filled


def compose_tool(tool: str, overrides: list[str], with_hydra: bool = False):
    TOOLS[tool].register()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3", job_name=tool):
        return compose(tool, overrides=overrides, return_hydra_config=with_hydra)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{i:02d}-{c.tool}" for i, c in enumerate(COMMANDS)])
def test_every_readme_command_composes_into_a_valid_config(command, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths (outputs/train/run/...) land here
    checkpoints = tmp_path / "outputs" / "train" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("last.ckpt", "step-000100.ckpt"):  # what a resume command names must exist
        (checkpoints / name).touch()
    overrides = fill_placeholders(command.overrides, "run", tmp_path)
    paths = ["paths.output_dir=out"] if TOOLS[command.tool].has_paths else []
    TOOLS[command.tool].validate(compose_tool(command.tool, [*overrides, *paths]))
    if command.multirun:  # the launcher and the sweep-summary callback resolve the sweep dir before any job has run
        hydra = compose_tool(command.tool, overrides, with_hydra=True).hydra
        assert str(hydra.sweep.dir).startswith(f"multirun/{command.tool}/")


def run_readme(command: Command, cwd: Path, *extra: str, run: str = "run", data: Path | None = None,
               env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a README command as typed (placeholders filled in, `extra` arguments appended) in `cwd`."""
    args = fill_placeholders(list(command.args), run, data or cwd)
    return subprocess.run([sys.executable, *TOOLS[command.tool].launch, *args, *extra], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def new_dir(parent: Path, before: set[Path]) -> Path:
    [created] = set(parent.iterdir()) - before
    return created


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, cache_dir) -> Path:
    """`python train.py experiment=quickstart` as typed, in a fresh directory; the run directory it made."""
    workdir = tmp_path_factory.mktemp("readme")
    ok(run_readme(readme_command(r"^python train\.py experiment=quickstart$"), workdir))
    [run_dir] = (workdir / "outputs" / "train").iterdir()
    return run_dir


def test_readme_quickstart_trains_validates_and_exports(quickstart) -> None:
    summary = json.loads((quickstart / "summary.json").read_text())
    assert summary["global_step"] == 150 and [h["step"] for h in summary["history"]] == [50, 100, 150]
    assert (quickstart / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (quickstart / "checkpoints" / "step-000100.ckpt").is_file()  # what the README's resume line names


@pytest.fixture(scope="module")
def resumed(quickstart) -> Path:
    """The README's quickstart resume line, from step 100 of the quickstart run, into a new run directory."""
    runs, workdir = quickstart.parent, quickstart.parents[2]  # <workdir>/outputs/train/<run>
    before = set(runs.iterdir())
    ok(run_readme(readme_command(r"experiment=quickstart ckpt_path="), workdir, run=quickstart.name))
    return new_dir(runs, before)


def test_readme_resume_continues_from_the_checkpoint_to_the_end(resumed) -> None:
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["global_step"] == 150
    assert [h["step"] for h in summary["history"]][-1] == 150  # the one evaluation after step 100
    assert (resumed / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_readme_resume_exports_the_uninterrupted_runs_best_adapter(quickstart, resumed) -> None:
    original = json.loads((quickstart / "summary.json").read_text())
    summary = json.loads((resumed / "summary.json").read_text())
    assert (summary["best_step"], summary["best_score"]) == pytest.approx((original["best_step"],
                                                                           original["best_score"]))
    adapter = load_file(resumed / "lora" / "pytorch_lora_weights.safetensors")
    reference = load_file(quickstart / "lora" / "pytorch_lora_weights.safetensors")
    assert adapter.keys() == reference.keys()
    assert all(torch.allclose(adapter[k], reference[k], atol=1e-5) for k in reference)


def test_readme_offline_inference_on_the_quickstart_adapter(quickstart) -> None:
    outputs = quickstart.parent.parent
    (outputs / "infer").mkdir(exist_ok=True)
    before = set((outputs / "infer").iterdir())
    ok(run_readme(readme_command(r"^python infer\.py model=tiny"), outputs.parent, run=quickstart.name))
    board = new_dir(outputs / "infer", before)
    manifest = json.loads((board / "manifest.json").read_text())
    assert manifest["status"] == "complete" and (board / "storyboard.png").is_file()


EVALUATE_SMALL = ["suite.prompts=[aldar_kose_man waving goodbye,aldar_kose_man playing a dombra]",
                  "stats.num_resamples=200"]


def test_readme_offline_evaluation_on_the_quickstart_adapter(quickstart) -> None:
    """The README's offline line with two prompts instead of the 25-prompt suite (all 25: the slow test)."""
    evaluate_offline(quickstart, EVALUATE_SMALL, frames=2 * 2 * 3)


@pytest.mark.slow
def test_readme_offline_evaluation_as_typed(quickstart) -> None:
    evaluate_offline(quickstart, [], frames=25 * 2 * 3)


def evaluate_offline(quickstart: Path, extra: list[str], frames: int) -> None:
    outputs = quickstart.parent.parent
    (outputs / "evaluate").mkdir(exist_ok=True)
    before = set((outputs / "evaluate").iterdir())
    ok(run_readme(readme_command(r"^python evaluate\.py model=tiny"), outputs.parent, *extra, run=quickstart.name))
    report = new_dir(outputs / "evaluate", before)
    assert (report / "report.md").is_file() and (report / "summary.csv").is_file()
    with (report / "results.csv").open() as results:  # one row per metric; frames count from 1
        assert len({(r["mode"], r["seed"], r["frame"]) for r in csv.DictReader(results) if r["frame"] != "0"}) == frames


SWEEP_SMOKE = r"^python train\.py -m experiment=rank_sweep model=tiny"
# appended to the README's CPU smoke sweep in the default suite: two runs of a few steps
SWEEP_SMALL = ["lora.rank=2,4", "trainer.max_steps=4", "validation.every_n_steps=2", "validation.seeds=[0]",
               "data.demo.num_images=8", "data.demo.size=64", "data.resolution=32", "logger=csv"]


def run_sweep(workdir: Path, experiment: str, extra: list[str], runs: int) -> None:
    """The README's CPU smoke sweep for `experiment`, in `workdir`, without a hydra.sweep.dir of its own."""
    smoke = readme_command(SWEEP_SMOKE)
    args = [a.replace("rank_sweep", experiment) if a.startswith("experiment=") else a for a in smoke.args]
    ok(run_readme(Command(smoke.line, "train", tuple(args)), workdir, *extra, timeout=900))
    [sweep_dir] = (workdir / "multirun" / "train").iterdir()
    summary = (sweep_dir / "sweep_summary.csv").read_text().splitlines()
    assert len(summary) == 1 + runs
    assert (sweep_dir / "sweep_summary.md").is_file() and (sweep_dir / "sweep_summary.png").is_file()
    for run in range(runs):
        assert (sweep_dir / str(run) / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.usefixtures("cache_dir")  # the tiny model and the demo character, made once per session
def test_readme_smoke_sweep_runs_with_the_default_sweep_dir(tmp_path) -> None:
    run_sweep(tmp_path, "rank_sweep", SWEEP_SMALL, runs=2)


@pytest.mark.slow
@pytest.mark.usefixtures("cache_dir")
@pytest.mark.parametrize(("experiment", "runs"), [("rank_sweep", 5), ("lr_sweep", 3), ("steps_sweep", 1)])
def test_readme_smoke_sweeps_as_typed(tmp_path, experiment, runs) -> None:
    """Each README sweep with the CPU smoke settings the README gives (steps_sweep: one run, at max_steps=20)."""
    run_sweep(tmp_path, experiment, [], runs=runs)


@pytest.fixture
def curated(tmp_path, cache_dir) -> Path:
    """The README's curate line on six 512 px demo renders without captions; the data folder it filled."""
    raw = generate_demo_dataset(tmp_path / "data" / "raw_renders", num_images=6, size=512, seed=1)
    for path in [*raw.glob("*.txt"), raw / "dataset.json"]:
        path.unlink()
    ok(run_readme(readme_command(r"^python -m aldar_lit\.curate"), tmp_path, data=tmp_path / "data"))
    assert len(list((tmp_path / "data" / "curated" / "images").glob("*.png"))) == 6
    return tmp_path / "data"


def test_readme_dataset_preparation_curates_then_captions(curated, serve, tmp_path) -> None:  # noqa: F811
    server = serve()
    env = {"OPENAI_API_KEY": SECRET}
    ok(run_readme(readme_command(r"^python -m aldar_lit\.caption input_dir=\S+$"), tmp_path,
                  f"base_url={server.base_url}", data=curated, env=env))
    images = curated / "curated" / "images"
    captions = sorted(images.glob("*.txt"))
    assert len(captions) == 6 and all(c.read_text().startswith("aldar_kose_man") for c in captions)
    assert json.loads((images / "caption_report.json").read_text())["failed"] == 0


@pytest.mark.slow
def test_readme_dataset_preparation_dry_run_then_training_on_it(curated, serve, tmp_path) -> None:  # noqa: F811
    server = serve()
    env = {"OPENAI_API_KEY": SECRET}
    ok(run_readme(readme_command(r"caption .*dry_run=true"), tmp_path, f"base_url={server.base_url}", data=curated,
                  env=env))
    assert server.requests == [] and not list((curated / "curated" / "images").glob("*.txt"))
    ok(run_readme(readme_command(r"^python -m aldar_lit\.caption input_dir=\S+$"), tmp_path,
                  f"base_url={server.base_url}", data=curated, env=env))
    smoke = [a for a in readme_command(SWEEP_SMOKE).overrides if not a.startswith(("experiment=", "data="))]
    ok(run_readme(readme_command(r"experiment=aldar_kose data.root=/path/to/curated/images"), tmp_path, *smoke,
                  data=curated))
    [run_dir] = (tmp_path / "outputs" / "train").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 20
