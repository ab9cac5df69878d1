"""The LightningModule trains what it should, the way SDXL expects."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from aldar_lit.config import DataConfig, LoraConfig, ObjectiveConfig, OptimConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.models.compilation import repeated_blocks, set_activation_memory_budget
from aldar_lit.training.module import SDXLLoRAModule
from saved_activations import SavedActivations

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True}
CONSTANT = {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"}


def make_module(model_cfg, objective=None, rank=4, unet_lr=1e-3, te_lr=5e-4) -> SDXLLoRAModule:
    return SDXLLoRAModule(
        model_cfg,
        LoraConfig(rank=rank, alpha=float(rank)),
        OptimConfig(optimizer=ADAMW, scheduler=CONSTANT, unet_lr=unet_lr, text_encoder_lr=te_lr),
        objective or ObjectiveConfig(),
        seed=0,
    )


def fit(module, root, max_steps, resolution=32, batch_size=2) -> L.Trainer:
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=resolution, batch_size=batch_size,
                                               num_workers=0))
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def two_images(tmp_path_factory, demo_data_dir):
    root = tmp_path_factory.mktemp("two")
    for name in ("000", "001"):
        (root / f"{name}.png").write_bytes((demo_data_dir / f"{name}.png").read_bytes())
        (root / f"{name}.txt").write_text((demo_data_dir / f"{name}.txt").read_text())
    return root


def test_param_groups_have_their_own_learning_rates(tiny_model_config, two_images) -> None:
    module = make_module(tiny_model_config, unet_lr=3e-4, te_lr=7e-5)
    trainer = fit(module, two_images, max_steps=1)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == {"unet": 3e-4, "text_encoder": 7e-5, "text_encoder_2": 7e-5}
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert in_groups == trainable
    assert all("lora_" in n for n, p in module.named_parameters() if p.requires_grad)


def test_loss_goes_down_on_two_images(tiny_model_config, two_images) -> None:
    module = make_module(tiny_model_config, unet_lr=1e-2, te_lr=5e-3)
    module.configure_model()
    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=2)))

    def fixed_noise_loss() -> float:  # the same noise and timesteps every time: only the weights change
        with torch.no_grad():
            return sum(module.compute_loss(batch, torch.Generator().manual_seed(s)).item() for s in range(4)) / 4

    before = fixed_noise_loss()
    fit(module, two_images, max_steps=40)
    assert fixed_noise_loss() < 0.95 * before


def test_unet_sees_sdxl_time_ids_of_each_image(tiny_model_config, tmp_path) -> None:
    Image.new("RGB", (96, 64), "orange").save(tmp_path / "wide.png")  # w=96, h=64
    (tmp_path / "wide.txt").write_text("aldar_kose_man, wide shot")
    module = make_module(tiny_model_config)
    module.configure_model()
    seen = []
    module.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True
    )
    data = CaptionedImageDataModule(DataConfig(root=str(tmp_path), resolution=32, batch_size=1, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=1)))
    module.compute_loss(batch, torch.Generator().manual_seed(0))
    # resized to 32x48, centre crop of 32x32 starts 8 px from the left: (orig h, w, top, left, target h, w)
    assert seen[0].tolist() == [[64.0, 96.0, 0.0, 8.0, 32.0, 32.0]]


def test_v_prediction_and_min_snr_change_the_objective(tiny_model_config, two_images) -> None:
    module = make_module(tiny_model_config)
    module.configure_model()
    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=2)))

    def loss(**objective) -> float:
        module.objective_cfg = ObjectiveConfig(**objective)
        with torch.no_grad():
            return module.compute_loss(batch, torch.Generator().manual_seed(7)).item()

    eps = loss()
    assert loss() == eps  # the generator fixes every random draw
    assert loss(prediction_type="v_prediction") != eps
    assert loss(min_snr_gamma=5.0) != eps
    assert loss(noise_offset=0.1) != eps


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_config, two_images) -> None:
    from dataclasses import replace

    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=2)))
    grads = []
    for checkpointing in (False, True):
        module = make_module(replace(tiny_model_config, gradient_checkpointing=checkpointing))
        module.configure_model()
        module.compute_loss(batch, torch.Generator().manual_seed(3)).backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.requires_grad})
    assert module.unet.is_gradient_checkpointing
    assert all(g is not None for g in grads[0].values())  # no adapter outside the loss's graph (DDP needs it)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "optimizer", [{"_target_": "bitsandbytes.optim.AdamW8bit", "_partial_": True},
                  {"_target_": "torch.optim.AdamW", "_partial_": True}],
)
def test_optimizers_and_cosine_schedule_step(tiny_model_config, two_images, optimizer) -> None:
    cosine = {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "cosine",
              "num_warmup_steps": 0}
    module = SDXLLoRAModule(tiny_model_config, LoraConfig(rank=4, alpha=4.0),
                            OptimConfig(optimizer=optimizer, scheduler=cosine, unet_lr=1e-3, text_encoder_lr=1e-4),
                            ObjectiveConfig())
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad and "lora_A" in n}
    trainer = fit(module, two_images, max_steps=4)
    assert type(trainer.optimizers[0]).__module__.split(".")[0] == optimizer["_target_"].split(".")[0]
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] < 1e-3  # cosine has decayed
    after = dict(module.named_parameters())
    assert all(not torch.equal(after[n], before[n]) for n in before)


def test_channels_last_and_compiled_parts_train_the_same_adapters(tiny_model_config, two_images) -> None:
    from dataclasses import replace

    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=2)))
    results = []
    compiled = {"compile_unet": "eager", "compile_unet_scope": "unet", "compile_text_encoders": "eager",
                "compile_mode": "reduce-overhead"}
    compiled_blocks = {"compile_unet": "eager"}  # the default scope
    for switches in ({}, {"channels_last": True}, compiled, compiled_blocks):
        module = make_module(replace(tiny_model_config, **switches))
        module.configure_model()
        if switches is compiled_blocks:  # each transformer block compiled on its own, the UNet around them not
            blocks = repeated_blocks(module.unet)
            assert blocks and all(m._compiled_call_impl is not None for m in blocks)
            assert module.unet._compiled_call_impl is None
        loss = module.compute_loss(batch, torch.Generator().manual_seed(5))
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}))
    plain_loss, plain_grads = results[0]
    for loss, grads in results[1:]:
        assert grads.keys() == plain_grads.keys()  # compiled in place: checkpoint keys unchanged
        assert loss == pytest.approx(plain_loss, rel=1e-5)
        for name in plain_grads:
            torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # inductor compiles C++ for the CPU, twice
def test_activation_memory_budget_keeps_less_for_the_backward_with_the_same_gradients(tiny_model_config,
                                                                                     two_images) -> None:
    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=2)))
    results = {}
    try:
        for budget in (None, 0.5):
            module = make_module(replace(tiny_model_config, compile_unet="inductor", activation_memory_budget=budget))
            module.configure_model()
            with SavedActivations(module) as saved:
                loss = module.compute_loss(batch, torch.Generator().manual_seed(5))
            loss.backward()
            results[budget] = saved.bytes, {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    finally:
        set_activation_memory_budget(1.0)  # the process-wide default, for the tests that follow
    (full_bytes, full_grads), (half_bytes, half_grads) = results[None], results[0.5]
    assert half_bytes < 0.8 * full_bytes
    for name in full_grads:
        torch.testing.assert_close(half_grads[name], full_grads[name], rtol=1e-3, atol=1e-6)


def test_unknown_compile_backend_names_the_key(tiny_model_config) -> None:
    from dataclasses import replace

    from aldar_lit.config import ConfigError

    with pytest.raises(ConfigError, match="^model.compile_unet: must be a torch.compile backend"):
        replace(tiny_model_config, compile_unet="warp-drive")
    with pytest.raises(ConfigError, match="^model.compile_text_encoders: must be a torch.compile backend"):
        replace(tiny_model_config, compile_text_encoders="warp-drive")
    with pytest.raises(ConfigError, match="^model.compile_mode: must be one of"):
        replace(tiny_model_config, compile_unet="inductor", compile_mode="ludicrous")
    with pytest.raises(ConfigError, match="^model.compile_mode: applies to compiled parts only"):
        replace(tiny_model_config, compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="^model.compile_unet_scope: must be one of"):
        replace(tiny_model_config, compile_unet="inductor", compile_unet_scope="everything")
    with pytest.raises(ConfigError, match=r"^model.activation_memory_budget: must be in \(0, 1\]"):
        replace(tiny_model_config, compile_unet="inductor", activation_memory_budget=1.5)
    with pytest.raises(ConfigError, match="^model.activation_memory_budget: applies to compiled parts only"):
        replace(tiny_model_config, activation_memory_budget=0.5)


def test_batch_moves_to_the_device_but_dataset_indices_stay_on_the_host(tiny_model_config) -> None:
    batch = {"index": torch.tensor([3, 7]), "pixel_values": torch.zeros(2, 3, 8, 8), "caption": ["a", "b"]}
    moved = make_module(tiny_model_config).transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["pixel_values"].device.type == "meta"
    assert moved["index"].device.type == "cpu" and moved["index"].tolist() == [3, 7]
    assert moved["caption"] == ["a", "b"]


class CountCasts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.casts += func.overloadpacket is torch.ops.aten._to_copy
        return func(*args, **(kwargs or {}))


def test_under_autocast_lora_inputs_are_not_cast_to_fp32_and_back(tiny_model_config, two_images) -> None:
    module = make_module(replace(tiny_model_config, dtype="bfloat16"))
    module.configure_model()
    data = CaptionedImageDataModule(DataConfig(root=str(two_images), resolution=32, batch_size=2, num_workers=0))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    def loss_and_grads(compute) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        module.zero_grad(set_to_none=True)
        with CountCasts() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compute(batch, torch.Generator().manual_seed(0))
            loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters() if p.requires_grad], counter.casts

    peft_casting = loss_and_grads(module._loss)  # peft's own behaviour: every LoRA input cast to fp32
    ours = loss_and_grads(module.compute_loss)
    torch.testing.assert_close(ours[0], peft_casting[0], rtol=0, atol=0)
    for got, expected in zip(ours[1], peft_casting[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    adapted_layers = sum("lora_A" in name for name, _ in module.named_parameters())
    assert ours[2] <= peft_casting[2] - 2 * adapted_layers  # one cast forward, one backward, per adapted layer
