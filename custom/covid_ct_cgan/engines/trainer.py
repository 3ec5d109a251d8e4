"""The conditional GAN trainer: one Ignite engine for every stage and baseline.

MONAI's ``GanTrainer`` draws latents instead of conditioning on a label map
and ``AdversarialTrainer`` feeds the condition as "real", so this is a
subclass of :class:`monai.engines.Trainer` (as the model-zoo's MAISI and
BraTS generative bundles do). One iteration:

1. generator forward on the condition (one-hot label map [+ context]);
2. discriminator step: least-squares GAN loss over all scales, real =
   (map, image), fake = (map, detached output), one batched forward;
3. DFM step (joint stage): the DFM weighting net is updated to *maximise*
   the dynamic feature-matching loss, on detached features;
4. generator step: GAN loss + ``lambda_fm`` x DFM feature matching
   (+ ``lambda_l1`` x L1 for the pix2pix baseline).

A non-finite loss skips the optimizer steps it would drive (no non-finite
update ever reaches the weights) and marks ``engine.state.non_finite``; the
:class:`~covid_ct_cgan.engines.handlers.NonFiniteLossGuard` handler stops the
run with a clear message.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from .. import losses

COMPILE_BACKEND = "inductor"  # torch.compile backend of ``compile=True`` (tests use a faster one)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def amp_by_default(device: torch.device | str) -> bool:
    """The default of ``amp``: on CUDA, and on CPUs with native bf16; off elsewhere, where bf16 is
    emulated and a convolution is tens of times slower than in fp32 (see ``benchmarks/``)."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: bf16 autocast on CPU, fp16 autocast on CUDA; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


class ConditionalGanTrainer(Trainer):
    """Train a label-map-conditional generator against a multi-resolution discriminator.

    Args:
        device: where the networks run.
        max_epochs: epochs of this stage.
        train_data_loader: batches with ``condition`` (generator input), ``image``
            (real slice in [-1, 1]), ``region`` (0/1 mask the generator fills)
            and ``label`` (integer label map).
        generator: maps the condition to an image in [-1, 1].
        discriminator: returns, per scale, a list of features whose last
            element is the patch prediction.
        g_optimizer: optimizer of the generator.
        d_optimizer: optimizer of the discriminator.
        dfm_net: DFM weighting net (returns one weight per sample); ``None``
            means the plain average of the scales (pix2pixHD).
        dfm_optimizer: optimizer of the DFM net; ``None`` keeps it fixed.
        num_map_channels: channels of the one-hot label map at the start of the
            condition; the discriminator sees these and the image.
        n_layers_d: layers of each PatchGAN (for the feature-matching weight).
        lambda_fm: weight of the feature-matching (DFM) loss.
        lambda_l1: weight of the L1 loss (pix2pix baseline; 0 otherwise).
        composite_fake: show the discriminator the generated region composited
            into the real slice (``map+context`` conditioning).
        region_weighted: weight GAN and feature-matching losses by the region
            (``map+context`` conditioning, SPEC 2).
        amp: mixed precision (bf16 autocast on CPU, AMP with a grad scaler on CUDA).
        compile: run the generator and discriminator through ``torch.compile`` (static
            shapes; the first iterations compile, minutes on a CPU; clears code compiled
            earlier in the process). The networks themselves stay plain modules, so
            checkpoints, validation and DDP see them.
        epoch_length, non_blocking, train_handlers, key_train_metric,
        additional_metrics, postprocessing, decollate: as in MONAI's ``Trainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        dfm_net: torch.nn.Module | None = None,
        dfm_optimizer: Optimizer | None = None,
        num_map_channels: int = 4,
        n_layers_d: int = 3,
        lambda_fm: float = 10.0,
        lambda_l1: float = 0.0,
        composite_fake: bool = False,
        region_weighted: bool = False,
        amp: bool = False,
        compile: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        postprocessing: Callable | None = None,
        decollate: bool = True,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            postprocessing=postprocessing,
            decollate=decollate,
            amp=amp,
        )
        self.generator = generator
        self.discriminator = discriminator
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.dfm_net = dfm_net
        self.dfm_optimizer = dfm_optimizer
        self.num_map_channels = int(num_map_channels)
        self.n_layers_d = int(n_layers_d)
        self.lambda_fm = float(lambda_fm)
        self.lambda_l1 = float(lambda_l1)
        self.composite_fake = bool(composite_fake)
        self.region_weighted = bool(region_weighted)
        self.state.non_finite = None
        self.compile = bool(compile)
        if self.compile:
            # code compiled for an earlier trainer (the previous stage of `training`) counts against
            # torch.compile's recompile limit, past which it silently runs eagerly: start afresh
            torch.compiler.reset()
        self._g_forward = _compiled(generator) if self.compile else generator
        self._d_forward = _compiled(discriminator) if self.compile else discriminator
        # toggling requires_grad of D in the generator step saves its weight gradients, but DDP
        # needs the same parameters to receive gradients in every backward
        self._toggle_d = not isinstance(discriminator, DistributedDataParallel)

    @property
    def network(self) -> torch.nn.Module:
        """The generator (the network a bundle exports and evaluates)."""
        return self.generator

    def run(self) -> None:  # type: ignore[override]
        """Train from the current state (resumes where a loaded checkpoint stopped)."""
        cuda = torch.device(self.state.device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if (self.amp and cuda) else None
        Engine.run(self, data=self.data_loader, max_epochs=self.state.max_epochs)

    def _backward_step(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
        else:
            loss.backward()
            optimizer.step()

    def _set_d_grad(self, flag: bool) -> None:
        if self._toggle_d:
            for p in self.discriminator.parameters():
                p.requires_grad_(flag)

    def _iteration(self, engine: ConditionalGanTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        cond = batchdata["condition"].to(device, non_blocking=nb).float()
        real = batchdata["image"].to(device, non_blocking=nb).float()
        region = batchdata["region"].to(device, non_blocking=nb).float()
        label_map = cond[:, : engine.num_map_channels]
        weight = unwrap(engine.discriminator).region_masks(region) if engine.region_weighted else None
        autocast = autocast_context(torch.device(device), engine.amp)
        batch = real.shape[0]

        # 1. generator forward
        with autocast:
            fake = engine._g_forward(cond)
        fake = fake.float()
        if engine.composite_fake:
            fake = region * fake + (1.0 - region) * real
        engine.state.output = {"image": real, "pred": fake}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # 2. discriminator step: real and fake through D in one batched forward. Each network's
        #    backward follows its forward before the next forward (DistributedDataParallel needs it).
        engine._set_d_grad(True)
        engine.d_optimizer.zero_grad(set_to_none=True)
        with autocast:
            both = torch.cat([torch.cat([label_map, real], 1), torch.cat([label_map, fake.detach()], 1)], 0)
            feats = engine._d_forward(both)
            real_feats = [[f[:batch] for f in scale] for scale in feats]
            fake_feats = [[f[batch:] for f in scale] for scale in feats]
            d_loss = 0.5 * (losses.lsgan_loss(real_feats, True, weight) + losses.lsgan_loss(fake_feats, False, weight))
        finite = bool(torch.isfinite(d_loss.detach()))
        if finite:
            engine._backward_step(d_loss, engine.d_optimizer)
        real_detached = [[f.detach().float() for f in scale] for scale in real_feats]
        fake_detached = [[f.detach().float() for f in scale] for scale in fake_feats]

        # 3. DFM weight: the weighting net sees D's features of the fake pair and is trained to
        #    maximise the DFM loss on detached feature-matching values (gradients reach it only)
        dfm_weight = None
        if engine.dfm_net is not None:
            learn = engine.dfm_optimizer is not None and len(feats) > 1
            with torch.set_grad_enabled(learn):
                dfm_weight = engine.dfm_net(fake_detached)
            if learn and finite:
                fm_detached = losses.feature_matching(real_detached, fake_detached, engine.n_layers_d, weight)
                engine.dfm_optimizer.zero_grad(set_to_none=True)
                engine._backward_step(losses.dfm_weight_objective(fm_detached, dfm_weight), engine.dfm_optimizer)
            dfm_weight = dfm_weight.detach()

        # 4. generator step: GAN + lambda_fm * DFM feature matching (+ lambda_l1 * L1 for pix2pix)
        engine._set_d_grad(False)
        engine.g_optimizer.zero_grad(set_to_none=True)
        with autocast:
            g_feats = engine._d_forward(torch.cat([label_map, fake], 1))
            g_gan = losses.lsgan_loss(g_feats, True, weight)
            g_fm = torch.zeros((), device=fake.device)
            if engine.lambda_fm > 0:
                fm = losses.feature_matching(real_detached, g_feats, engine.n_layers_d, weight)
                g_fm = losses.dfm_loss(fm, dfm_weight if dfm_weight is not None else 0.5)
            g_l1 = losses.l1_loss(fake, real) if engine.lambda_l1 > 0 else torch.zeros((), device=fake.device)
            g_loss = g_gan + engine.lambda_fm * g_fm + engine.lambda_l1 * g_l1
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        values = {"loss": g_loss, "d_loss": d_loss, "g_gan": g_gan, "g_fm": g_fm, "g_l1": g_l1,
                  "desum_weight": getattr(unwrap(engine.generator), "last_desum_weight", None), "dfm_weight": dfm_weight}
        scalars = _to_host(values)  # one device-to-host copy an iteration for every logged value
        finite = finite and all(math.isfinite(scalars[k]) for k in ("loss", "d_loss", "g_gan", "g_fm", "g_l1"))
        if finite:
            engine._backward_step(g_loss, engine.g_optimizer)
        else:
            engine.state.non_finite = {k: scalars[k] for k in ("loss", "d_loss", "g_gan", "g_fm", "g_l1")}
        if engine.scaler is not None:
            engine.scaler.update()
        engine._set_d_grad(True)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        output: dict[str, Any] = {"image": real, "pred": fake.detach(), "label": batchdata.get("label"), **scalars}
        if output["label"] is None:
            del output["label"]
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated per sample by MONAI's handler on MODEL_COMPLETED


def _compiled(module: torch.nn.Module) -> Callable:
    """``torch.compile(module)``: a wrapper that shares the module's parameters and state."""
    return torch.compile(module, backend=COMPILE_BACKEND, dynamic=False)


def _to_host(values: dict[str, torch.Tensor | float | None]) -> dict[str, float]:
    """The mean of every value as a Python float (``nan`` for ``None``), tensors copied to the host together."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    host = dict(zip(tensors, torch.stack([v.detach().float().mean() for v in tensors.values()]).tolist())) if tensors else {}
    return {k: host[k] if k in tensors else (math.nan if v is None else float(v)) for k, v in values.items()}
