"""Scale-out behaviour on the CPU: DDP over 2 processes (gloo) started by Lightning, torchrun or SLURM, the
out-of-memory advice, SLURM sweeps."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aldar_lit.training.run import memory_advice, out_of_memory_advice
from conftest import REPO_ROOT
from test_config import compose_train
from test_train_script import train, train_command

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
COMMON = ("trainer.max_steps=3", "checkpoint.every_n_train_steps=null")
TWO_RANKS = ("data.batch_size=2", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "trainer.precision=32-true")


def train_as_slurm_tasks(run_dir: Path, *overrides: str, tasks: int = 2) -> None:
    """What `srun --ntasks=2 python train.py ...` starts: one process per task, told its rank by SLURM."""
    job = {"SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks), "SLURM_NNODES": "1",
           "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "aldar"}
    processes = [
        subprocess.Popen(train_command(run_dir, *overrides), cwd=REPO_ROOT, text=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE,
                         env={**os.environ, **job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
        for rank in range(tasks)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("one")
    train(run_dir, *COMMON, "data.batch_size=4")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "compiled"),
                         [("lightning", False), ("torchrun", False), ("slurm", False), ("lightning", True)])
def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(one_process_run: Path, tmp_path: Path,
                                                                           launcher: str, compiled: bool) -> None:
    # compiled: the UNet's blocks by inductor on each rank, under DDP's gradient hooks
    overrides = (*COMMON, *TWO_RANKS, *(["model.compile_unet=inductor"] if compiled else []))
    # under torchrun and SLURM, Lightning finds its cluster environment and starts no processes of its own
    if launcher == "slurm":
        train_as_slurm_tasks(tmp_path, *overrides)
    else:
        train(tmp_path, *overrides, launcher=TORCHRUN if launcher == "torchrun" else ())
    for run in (one_process_run, tmp_path):
        assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    single = load_file(one_process_run / "lora" / "pytorch_lora_weights.safetensors")
    ddp = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert single.keys() == ddp.keys()
    changed = 0
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-3 if compiled else 1e-4, atol=1e-5)
        changed += int(".up." in key and single[key].abs().max() > 0)
    assert changed > 0  # the runs trained something


def test_out_of_memory_is_reraised_with_settings_that_fit() -> None:
    config = compose_train("experiment=aldar_kose", "data.root=/renders")
    with pytest.raises(torch.OutOfMemoryError) as caught:
        with out_of_memory_advice(config):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(caught.value)
    assert message.startswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    for override in ("data.batch_size=2 +trainer.accumulate_grad_batches=2", "model.gradient_checkpointing=true",
                     "optim=adamw8bit", "lora.train_text_encoders=false",
                     "model.compile_unet=inductor model.activation_memory_budget=0.5"):
        assert override in message
    assert memory_advice(config)[0].startswith("model.gradient_checkpointing=true")  # the largest measured saving


def test_memory_advice_leaves_out_what_is_already_on() -> None:
    config = compose_train("experiment=aldar_kose", "data.root=/renders", "optim=adamw8bit",
                           "model.gradient_checkpointing=true", "data.batch_size=1", "model.compile_unet=inductor",
                           "model.activation_memory_budget=0.7")
    advice = " ".join(memory_advice(config))
    assert "adamw8bit" not in advice and "gradient_checkpointing" not in advice and "batch_size" not in advice
    assert "activation_memory_budget" not in advice


def test_memory_advice_on_a_compiled_run_names_only_the_budget() -> None:
    config = compose_train("experiment=aldar_kose", "data.root=/renders", "model.compile_unet=inductor")
    advice = [line for line in memory_advice(config) if "activation_memory_budget" in line]
    assert len(advice) == 1 and advice[0].startswith("model.activation_memory_budget=0.5 ")


def test_sweeps_can_launch_on_slurm_through_submitit() -> None:
    from hydra import compose, initialize_config_dir

    from aldar_lit.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=rank_sweep", "data.root=/renders", "hydra/launcher=submitit_slurm",
                                          "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.sweeper.params["lora.rank"] == "8,16,32,64,128"
