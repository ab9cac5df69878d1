"""What a user sees at the console: one-line errors for their own mistakes, no harmless-warning noise, and tools that
work from any directory."""

from __future__ import annotations

import logging
import logging.config
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning_utilities.core import rank_zero
from omegaconf import OmegaConf
from PIL import Image

from aldar_lit.config.infer import register_infer_configs
from aldar_lit.image_grid import LINE_HEIGHT

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
    assert "gemm_4bit_forward" not in result.stdout + result.stderr  # bitsandbytes' harmless notice is not shown


def test_the_tools_logging_drops_only_the_known_harmless_lines(tmp_path: Path, capsys) -> None:
    """Hydra's job logging as the tools compose it: the exact harmless lines go, other warnings of the same loggers
    stay (on the console and in the job's log file)."""
    register_infer_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("infer", return_hydra_config=True, overrides=[f"hydra.runtime.output_dir={tmp_path}"])
    logging.config.dictConfig(OmegaConf.to_container(cfg.hydra.job_logging, resolve=True))
    try:
        bnb, lightning = logging.getLogger("bitsandbytes.backends.cpu.ops"), rank_zero.log  # the logger Lightning tips go to
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", ModuleNotFoundError("No module named 'kernels'"))
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", OSError("illegal instruction"))
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
        lightning.warning("The dataloader does not have many workers which may be a bottleneck.")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "root": {"handlers": []}})
    for shown in (capsys.readouterr().out, (tmp_path / f"{cfg.hydra.job.name}.log").read_text()):
        assert "No module named 'kernels'" not in shown and "Tip" not in shown
        assert "illegal instruction" in shown and "does not have many workers" in shown


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback_and_a_multirun_stops_on_the_failed_job(tmp_path: Path) -> None:
    full = tool("infer.py", *INFER_TINY, "lora.path=nowhere", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "AdapterError" in full.stderr
    sweep = tool("infer.py", "-m", *INFER_TINY[:-1], "lora.path=nowhere_a,nowhere_b", "hydra.sweep.dir=sweep",
                 cwd=tmp_path)
    assert sweep.returncode == 1 and "Traceback" not in sweep.stderr
    assert "error: lora: 'nowhere_a': no such directory" in sweep.stderr
    assert {p.name for p in (tmp_path / "sweep").iterdir()} >= {"0", "1"}  # each job ran and has its own record


def test_identity_heatmap_titles_clear_the_axis_labels_of_the_row_above() -> None:
    import numpy as np

    from aldar_lit.evaluation.report import identity_heatmaps_figure

    matrix = np.eye(3)
    heatmaps = {(mode, story, seed, "dlib"): matrix for mode in ("baseline", "simple", "ref_guided")
                for story, seed in (("aldar_kose", 0), ("aldar_kose", 1))}
    fig = identity_heatmaps_figure(heatmaps, "dlib")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes[:6]).reshape(3, 2)
    for above, below in zip(axes[:-1].ravel(), axes[1:].ravel()):
        label = above.xaxis.label.get_window_extent(renderer)
        title = below.title.get_window_extent(renderer)
        assert not label.overlaps(title), (above.get_title(), below.get_title())


@pytest.mark.parametrize(("command", "opening"), [
    (["train.py"], "Train a character LoRA on SDXL"),
    (["infer.py"], "Turn a story (a scene list"),
    (["evaluate.py"], "Compare baseline, LoRA (simple) and reference-guided storyboards"),
    (["-m", "aldar_lit.caption"], "Caption training images"),
    (["-m", "aldar_lit.curate"], "Curate raw renders into a training set"),
])
def test_each_tool_has_its_own_help(command: list[str], opening: str) -> None:
    script = [str(REPO_ROOT / command[0])] if command[0].endswith(".py") else command
    result = subprocess.run([sys.executable, *script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(opening) and "Main keys:" in result.stdout
    assert "is powered by Hydra" not in result.stdout and "== Config ==" not in result.stdout  # Hydra's generic page


def test_train_then_the_command_it_suggests_each_end_with_where_the_outputs_are(tmp_path: Path, cache_dir: Path,
                                                                              tiny_model_dir: Path) -> None:
    """A tiny quickstart-style run from outside the checkout: its last lines name the adapter, the summary and the
    storyboard command, which runs as printed and ends by naming its storyboard; no harmless-warning noise."""
    run_dir = tmp_path / "train"
    trained = tool("train.py", "experiment=quickstart", "callbacks=none", "logger=csv", "data.resolution=32",
                   "lora.rank=2", "lora.alpha=4", "data.demo.num_images=4", "data.demo.size=64", "trainer.max_steps=2",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines = trained.stdout.strip().splitlines()
    tail = lines[next(i for i, line in enumerate(lines) if line.endswith("training finished at step 2")):]
    assert [line.strip() for line in tail[1:-1]] == [f"adapter:           {run_dir}/lora",
                                                     f"summary:           {run_dir}/summary.json",
                                                     "next, a storyboard with this adapter:"]  # last: W&B's are above
    assert "train (epoch 1): 100%|██████████| 2/2 [" in trained.stdout  # steps of max_steps, not batches of an epoch
    for noise in ("gemm_4bit_forward", "💡 Tip"):
        assert noise not in trained.stdout + trained.stderr
    command = shlex.split(tail[-1])
    assert command[:2] == ["python", "infer.py"]
    board_dir = tmp_path / "board"
    inferred = tool("infer.py", *command[2:], "generation.steps=1", f"hydra.run.dir={board_dir}", "progress=false",
                    cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    lines = inferred.stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(f"storyboard written to {board_dir} (0 of 6 "
                                                                     "frames passed QA; manifest.json lists each "
                                                                     "frame's attempts and failures)"))
    assert lines[start + 1].strip() == f"sheet: {board_dir}/storyboard.png" and (board_dir / "storyboard.png").is_file()
    assert lines[-1].strip().startswith(f"python evaluate.py lora.path={run_dir}/lora reference_images=")
    from aldar_lit.config.evaluate import register_evaluate_configs

    register_evaluate_configs()
    evaluate = shlex.split(lines[-1].replace("<the training images dir>", "/data"))[2:]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        suggested = compose(config_name="evaluate", overrides=evaluate)  # offline: the tiny model, adapters, scorer
    assert (suggested.model.name, suggested.scorer.clip.pretrained, suggested.generation.steps) == ("tiny", None, 1)
    # random weights: the page and the sheet say so at the top; every frame failed QA (no face) and is marked
    page = (board_dir / "storyboard.html").read_text()
    assert -1 < page.find("TEST MODE, random weights (model tiny, QA CLIP aldar-tiny-clip)") < page.find("<h1>")
    assert "None" not in page and page.count("CLIP-T ") == 6
    sheet = Image.open(board_dir / "storyboard.png").convert("RGB")
    banner = sheet.crop((0, 0, sheet.width, 2 * LINE_HEIGHT)).getcolors(sheet.width * 2 * LINE_HEIGHT)
    assert any(colour[0] > 200 and colour[1] < 60 for _, colour in banner)  # red banner text on white
    assert sheet.getpixel((0, 2 * LINE_HEIGHT)) == (255, 0, 0)  # frame 1's red "QA failed" border


def test_training_with_offline_wandb_prints_no_wandb_tips_and_ends_with_the_sync_command(tmp_path: Path,
                                                                                           cache_dir: Path) -> None:
    """W&B's info lines (version, offline notice, its own sync hint) are off the console (WANDB_SHOW_INFO, set by
    conf/hydra/default.yaml); the closing summary names the offline run and the `wandb sync` command instead."""
    run_dir = tmp_path / "train"
    trained = tool("train.py", "experiment=quickstart", "callbacks=none", "data.resolution=32", "lora.rank=2",
                   "lora.alpha=4", "data.demo.num_images=4", "data.demo.size=64", "trainer.max_steps=2",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"WANDB_SILENT": "false"})  # as users run it
    assert trained.returncode == 0, trained.stderr[-3000:]
    for tip in ("Tracking run with wandb version", "W&B syncing is set to", "Run data is saved locally",
                "You can sync this run", "wandb leet", "Find logs at"):
        assert tip not in trained.stdout + trained.stderr
    [sync_dir] = (run_dir / "wandb").glob("offline-run-*")
    assert f"  W&B run (offline): {sync_dir}; upload it with: wandb sync {sync_dir}" in trained.stdout.splitlines()
    assert list(sync_dir.glob("*.wandb"))  # what `wandb sync` uploads


def test_evaluation_folds_frame_warnings_into_one_count_and_ends_with_its_report(tmp_path: Path, tiny_model_dir: Path,
                                                                                 demo_data_dir: Path, caplog) -> None:
    """Random tiny frames hold no face, so QA flags every frame: one counted warning, not one per frame."""
    from aldar_lit.config.evaluate import register_evaluate_configs
    from aldar_lit.evaluation.run import run

    register_evaluate_configs()
    overrides = ["model=tiny", "adapters=tiny", "qa=tiny", "scorer=tiny", "modes=[baseline]", "generation.width=64",
                 "generation.height=64", "generation.steps=1", "generation.device=cpu", "suite.seeds=[0,1]",
                 "suite.prompts=[aldar_kose_man waving,aldar_kose_man riding]", "identity.backends=[dlib]",
                 "qa.max_attempts=1", "stats.num_resamples=100", f"reference_images={demo_data_dir}",
                 f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    with caplog.at_level(logging.INFO):
        run(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not any(w.startswith(("frame ", "no face found in frame")) for w in warnings)  # none per frame
    # per storyboard: frames 1 and 2 kept although they failed QA, and frame 1 (the identity anchor) has no face
    assert any(w.startswith("6 storyboard warnings (frames kept although no attempt passed QA, frames without a face)"
                            " in 2 of 2 generated storyboards") for w in warnings)
    closing = caplog.records[-1].getMessage().splitlines()
    assert closing[:2] == [f"evaluation written to {tmp_path}", f"  report: {tmp_path / 'report.md'}"]
    assert closing[2].startswith("  score (baseline): ") and closing[-1].startswith("  test mode, random weights")
