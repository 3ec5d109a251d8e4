"""The conditional GAN trainer: one Ignite engine for every stage and baseline.

MONAI's ``GanTrainer`` draws latents instead of conditioning on a label map
and ``AdversarialTrainer`` feeds the condition as "real", so this is a
subclass of :class:`monai.engines.Trainer` (as the model-zoo's MAISI and
BraTS generative bundles do). One iteration (``_iteration``), one method per step:

1. generator forward on the condition (one-hot label map [+ context]),
   ``_generator_forward``;
2. discriminator step (``_discriminator_step``): GAN loss over all scales (least
   squares, or pix2pix's cross-entropy with ``gan_mode="vanilla"``), real = (map,
   image), fake = (map, detached output), one batched forward; backward and
   optimizer step;
3. DFM step (``_dfm_step``, joint stage): the DFM weighting net reads D's features
   of the fake pair and is updated to *maximise* the dynamic feature-matching loss,
   on detached features of that same forward;
4. generator step: GAN loss + ``lambda_fm`` x DFM feature matching
   (+ ``lambda_l1`` x L1 for the pix2pix baseline), ``_generator_losses``; its
   backward and optimizer step, ``_generator_update``, once the logged values are
   on the host and checked. The generator is scored
   by the discriminator as updated in step 2, and feature matching compares
   the fake pair's features with the real pair's features of that *same*
   discriminator state: the real pair goes through D again, without gradients
   (one more forward of the real half; pix2pixHD takes both from one state too).
   A forward without gradients does not touch DistributedDataParallel's
   gradient reducer, so this is safe with DDP, and both forwards run under the
   same autocast, so with AMP too.

With a ``local_discriminator`` (lesion inpainting, Iizuka et al. 2017's global +
local discriminators) every step also scores ``local_crop`` x ``local_crop`` crops
centred on a random component of each sample's region, cut at the same place from
the real and the composited fake pair (map and image): ``d_local`` joins the
discriminator loss and ``g_local`` + ``lambda_fm`` x ``g_local_fm`` (feature
matching on the local D, real crop through its current state) the generator loss,
both times ``lambda_local``. Its methods are grouped at the end of the class: the
crops (``_local_batch``, drawn before the generator runs), ``_local_d_loss`` in
step 2 and ``_local_g_terms`` in step 4. One optimizer (``d_optimizer``) holds the
parameters of both discriminators; a sample without region gets zero weight in the
local terms.
With ``lambda_texture > 0`` the generator's local terms also get ``lambda_texture`` x
``g_local_texture``: the Gram-matrix distance of the local D's features of the real
and the fake crop inside the region (:func:`~covid_ct_cgan.losses.texture_loss`),
which asks for the real region's texture but not its exact layout.

Two options of what the discriminators are shown (both off by default, see ``train.yaml``):

- ``d_target="region"``: in the discriminator step the composited fake pair's
  target is per patch, ``1 - soft mask`` of the synthesised region
  (:func:`~covid_ct_cgan.losses.region_fake_targets`, AOT-GAN's SM-PatchGAN):
  0 where a patch's view is centred on drawn pixels, 1 where it sees only the
  real slice. Global discriminator only (the local D's crops are centred on the
  region). Without ``composite_fake`` (``map`` conditioning) every pixel is
  synthesised, so the region target is the uniform 0: the option changes nothing.
- ``d_augment="translation,cutout"``: DiffAugment
  (:class:`~covid_ct_cgan.networks.diffaugment.DiffAugment`) on every input of
  the global and the local discriminator. The discriminator step draws one
  transform per sample for its real and fake pair; the generator step draws
  afresh and gives the real pair of feature matching the fake pair's transform.
  The region (weights and targets) moves with the image.

With ``freeze_global_epochs = N`` the global generator G1 gets no update in the
first N epochs (pix2pixHD's ``niter_fix_global``): its gradients are dropped
before the generator's optimizer step, so Adam (fused or not) skips its
parameters and keeps no moments for them until they train.

A non-finite loss skips the optimizer steps it would drive (no non-finite
update ever reaches the weights) and marks ``engine.state.non_finite``; the
:class:`~covid_ct_cgan.engines.handlers.NonFiniteLossGuard` handler stops the
run with a clear message. The AMP grad scaler is updated only after an
iteration that stepped an optimizer (it has nothing to update from otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from ignite.engine import Engine
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from .. import losses
from ..networks.diffaugment import AugmentDraw, DiffAugment
from ..networks.discriminator import crop_patches, region_crop_boxes
from ..networks.wrapping import unwrap
from ..precision import autocast_context
from .attached import RecordsAttachedHandlers

logger = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # torch.compile backend of ``compile=True`` (tests use a faster one)


class _LocalBatch(NamedTuple):
    """What the local discriminator sees of one batch (see :meth:`ConditionalGanTrainer.local_crops`)."""

    crop: Callable[[torch.Tensor], torch.Tensor]  # cuts every sample's box out of a (B, C, H, W) tensor
    has_region: torch.Tensor  # (B, 1, 1, 1): 1 for samples with a region, 0 for the others
    region: torch.Tensor  # the region, cropped


class _DiscriminatorStep(NamedTuple):
    """What the discriminator step (step 2) leaves to the DFM and generator steps."""

    loss: torch.Tensor  # d_loss, the global discriminator's
    local: torch.Tensor | None  # d_local, the local discriminator's (None without one)
    real_feats: list  # the global D's features of the real pair, per scale ...
    fake_feats: list  # ... and of the fake pair, from the same forward
    weight: list | None  # that forward's region weights (None unless region_weighted)
    finite: bool  # the loss was finite, so the discriminators stepped


class _GeneratorLosses(NamedTuple):
    """The generator's loss (step 4) and its terms; the local discriminator's are None without one."""

    loss: torch.Tensor
    gan: torch.Tensor
    fm: torch.Tensor
    l1: torch.Tensor
    local: torch.Tensor | None = None
    local_fm: torch.Tensor | None = None
    local_texture: torch.Tensor | None = None


class ConditionalGanTrainer(RecordsAttachedHandlers, Trainer):
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
            (``map+context`` conditioning).
        gan_mode: ``"lsgan"`` (least squares, pix2pixHD and the paper) or ``"vanilla"``
            (pix2pix's cross-entropy on logits), for the discriminator and generator losses.
        freeze_global_epochs: the first epochs in which the generator's ``global_net`` (G1)
            is not updated (joint stage; pix2pixHD's ``niter_fix_global``); 0 trains it throughout.
        local_discriminator: local discriminator on crops around the region
            (:class:`~covid_ct_cgan.networks.discriminator.LocalDiscriminator`, lesion
            inpainting); ``None`` trains without one. Its parameters must be in ``d_optimizer``.
        local_crop: side of the local discriminator's crops in pixels at this stage's
            resolution (at most the image size: a larger value is cut to it).
        lambda_local: weight of the local discriminator's GAN and feature-matching terms.
        lambda_texture: weight of the texture (Gram) term on the local discriminator's features (0: none).
        d_target: the global discriminator's target for the fake pair in its own step: ``"uniform"`` (0
            everywhere, pix2pixHD) or ``"region"`` (0 only where the composite was synthesised, soft, see
            :func:`~covid_ct_cgan.losses.region_fake_targets`; the same as ``"uniform"`` without ``composite_fake``).
        d_augment: DiffAugment policy of both discriminators' inputs: ``""`` (off), ``"translation"``,
            ``"cutout"`` or both (a comma-separated string or a list), see
            :class:`~covid_ct_cgan.networks.diffaugment.DiffAugment`.
        amp: mixed precision (bf16 autocast on CPU, AMP with a grad scaler on CUDA).
        grad_scaler: the loss scaler of the optimizer steps; default: a CUDA ``GradScaler``
            when ``amp`` runs on CUDA, none otherwise.
        compile: run the generator and discriminator through ``torch.compile`` (static
            shapes; the first iterations compile, minutes on a CPU; clears code compiled
            earlier in the process). The networks themselves stay plain modules, so
            checkpoints, validation and DDP see them.
        channels_last: keep the weights of the networks and the batch in the channels-last
            memory format (oneDNN's native layout on CPU; values, checkpoints and state-dict
            keys unchanged). The networks are converted in place when the trainer is built.
        epoch_length, non_blocking, train_handlers, key_train_metric,
        additional_metrics, postprocessing, decollate: as in MONAI's ``Trainer``.

    Raises:
        ValueError: unknown ``gan_mode`` or ``d_target``, an unknown ``d_augment`` name, negative ``freeze_global_epochs``,
            ``freeze_global_epochs > 0`` with a generator that has no ``global_net``,
            ``local_crop < 1``, negative ``lambda_local``, negative ``lambda_texture``,
            or a local discriminator whose parameters are not in ``d_optimizer``.
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
        gan_mode: str = "lsgan",
        freeze_global_epochs: int = 0,
        local_discriminator: torch.nn.Module | None = None,
        local_crop: int = 64,
        lambda_local: float = 1.0,
        lambda_texture: float = 0.0,
        d_target: str = "uniform",
        d_augment: str | Sequence[str] = "",
        amp: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
        compile: bool = False,
        channels_last: bool = False,
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
        if gan_mode not in losses.GAN_MODES:
            raise ValueError(f"gan_mode must be one of {losses.GAN_MODES}, got {gan_mode!r}")
        self.gan_mode = gan_mode
        self.freeze_global_epochs = int(freeze_global_epochs)
        if self.freeze_global_epochs < 0:
            raise ValueError(f"freeze_global_epochs must be >= 0, got {freeze_global_epochs}")
        global_net = getattr(unwrap(generator), "global_net", None)
        if self.freeze_global_epochs and not isinstance(global_net, torch.nn.Module):
            raise ValueError(
                f"freeze_global_epochs={self.freeze_global_epochs} needs a generator with a global_net (G1); "
                f"{type(unwrap(generator)).__name__} has none"
            )
        self._global_params = list(global_net.parameters()) if isinstance(global_net, torch.nn.Module) and self.freeze_global_epochs else []
        self.local_discriminator = local_discriminator
        self.local_crop = int(local_crop)
        self.lambda_local = float(lambda_local)
        if self.local_crop < 1:
            raise ValueError(f"local_crop must be at least 1, got {local_crop}")
        if not self.lambda_local >= 0:
            raise ValueError(f"lambda_local must be at least 0, got {lambda_local}")
        self.lambda_texture = float(lambda_texture)
        if not self.lambda_texture >= 0:
            raise ValueError(f"lambda_texture must be at least 0, got {lambda_texture}")
        if local_discriminator is not None:
            held = {id(p) for group in d_optimizer.param_groups for p in group["params"]}
            if any(id(p) not in held for p in local_discriminator.parameters()):
                raise ValueError("local_discriminator's parameters must be in d_optimizer (one optimizer for both discriminators)")
        # crop positions from their own random stream (seeded by set_determinism's seed): turning the
        # local discriminator on does not shift any other random draw
        self._crop_rng = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        if d_target not in losses.D_TARGETS:
            raise ValueError(f"d_target must be one of {losses.D_TARGETS}, got {d_target!r}")
        self.d_target = d_target
        # the region target differs from the uniform one only where the fake is a composite
        self._region_targets = d_target == "region" and self.composite_fake
        # DiffAugment's draws from a stream of their own too (not the crop stream's seed: the two would draw the
        # same numbers), so turning it on shifts no other draw either
        self.d_augment = DiffAugment(d_augment, seed=torch.initial_seed() % 2**63 + 1)
        self._global_frozen = False
        self.grad_scaler = grad_scaler
        # MONAI's Workflow declares this attribute with the older torch.cuda.amp class
        self.scaler: torch.amp.GradScaler | None = None  # type: ignore[assignment]
        self.state.non_finite = None
        self.channels_last = bool(channels_last)
        if self.channels_last:
            for net in (generator, discriminator, dfm_net, local_discriminator):
                if net is not None:
                    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # in place: optimizers keep their parameters
        self.compile = bool(compile)
        if self.compile:
            # code compiled for an earlier trainer (the previous stage of `training`) counts against
            # torch.compile's recompile limit, past which it silently runs eagerly: start afresh
            torch.compiler.reset()
        self._g_forward = _compiled(generator) if self.compile else generator
        self._d_forward = _compiled(discriminator) if self.compile else discriminator
        # None without a local discriminator; called only when there is one
        self._ld_forward: Any = (_compiled(local_discriminator) if self.compile else local_discriminator) \
            if local_discriminator is not None else None
        # toggling requires_grad of D in the generator step saves its weight gradients, but DDP
        # needs the same parameters to receive gradients in every backward (so a frozen G1 under
        # DDP computes its gradients and they are dropped before the step)
        self._toggle_d = not isinstance(discriminator, DistributedDataParallel)
        self._toggle_local_d = local_discriminator is not None and not isinstance(local_discriminator, DistributedDataParallel)
        self._toggle_g = not isinstance(generator, DistributedDataParallel)

    @property
    def network(self) -> torch.nn.Module:
        """The generator (the network a bundle exports and evaluates)."""
        return self.generator

    def run(self) -> None:  # type: ignore[override]
        """Train from the current state (resumes where a loaded checkpoint stopped)."""
        cuda = torch.device(self.state.device).type == "cuda"
        if self.grad_scaler is not None:
            self.scaler = self.grad_scaler
        else:
            self.scaler = torch.amp.GradScaler("cuda") if (self.amp and cuda) else None
        try:
            Engine.run(self, data=self.data_loader, max_epochs=self.state.max_epochs)
        finally:
            self._freeze_global(False, log=False)  # G1 leaves the run trainable, however it ended

    def global_frozen(self, epoch: int) -> bool:
        """Whether G1 is frozen in ``epoch`` (1-based, as ``engine.state.epoch`` during an epoch)."""
        return epoch <= self.freeze_global_epochs

    def _freeze_global(self, frozen: bool, log: bool = True) -> None:
        """Mark G1 frozen or trainable (``requires_grad`` off/on too, where DDP allows it)."""
        if frozen != self._global_frozen and log:
            state = f"is frozen until epoch {self.freeze_global_epochs}" if frozen else "trains from now on"
            logger.info(f"epoch {self.state.epoch}: the global generator (G1) {state}")
        self._global_frozen = frozen
        if self._toggle_g:
            for p in self._global_params:
                p.requires_grad_(not frozen)

    def _backward_step(self, loss: torch.Tensor, optimizer: Optimizer, drop: Sequence[torch.Tensor] = ()) -> None:
        """Backward and step; the gradients of ``drop`` are removed first, so the optimizer skips those parameters."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        for p in drop:
            p.grad = None
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def _set_d_grad(self, flag: bool) -> None:
        """``requires_grad`` of both discriminators' weights (off in the generator step; not under DDP)."""
        if self._toggle_d:
            for p in self.discriminator.parameters():
                p.requires_grad_(flag)
        if self._toggle_local_d and self.local_discriminator is not None:
            for p in self.local_discriminator.parameters():
                p.requires_grad_(flag)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this run's forwards (a no-op without ``amp``)."""
        return autocast_context(torch.device(self.state.device), self.amp)

    def _augment_draw(self, like: torch.Tensor) -> AugmentDraw | None:
        """A fresh DiffAugment draw for a batch shaped like ``like`` (B, C, H, W); ``None`` when it is off."""
        if not self.d_augment.enabled:
            return None
        return self.d_augment.draw(like.shape[0], like.shape[-2], like.shape[-1])

    def _d_view(
        self, draw: AugmentDraw | None, inputs: torch.Tensor, region: torch.Tensor, targets: bool = False
    ) -> tuple[torch.Tensor, list | None, list | None]:
        """What the global discriminator sees of ``inputs`` (stacked pairs of one batch) under ``draw``.

        Returns ``(inputs, weight, fake_targets)``: the inputs augmented by ``draw`` (unchanged if ``None``),
        the region weights of the region moved the same way (``None`` unless ``region_weighted``) and, if
        ``targets``, the fake pair's region targets (``None`` unless ``d_target="region"`` with composites).
        """
        if draw is not None:
            inputs, region = draw(inputs), draw.mask(region)
        weight = unwrap(self.discriminator).region_masks(region) if self.region_weighted else None
        fake_targets = None
        if targets and self._region_targets:
            fake_targets = losses.region_fake_targets(region, unwrap(self.discriminator))
        return inputs, weight, fake_targets

    # ---- one iteration: the steps of the module's docstring, one method each

    def _iteration(self, engine: ConditionalGanTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """Generator forward, discriminator step, DFM step, generator step; returns the iteration's output."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        cond, real, region = engine._batch_tensors(batchdata)
        label_map = cond[:, : engine.num_map_channels]
        if engine.freeze_global_epochs:
            engine._freeze_global(engine.global_frozen(engine.state.epoch))
        local = engine._local_batch(batchdata, region)  # the local D's crops (None without one)

        # 1. generator forward
        fake = engine._generator_forward(cond, real, region)
        engine.state.output = {"image": real, "pred": fake}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # 2. discriminator step; 3. DFM step on that forward's detached features
        d = engine._discriminator_step(label_map, real, fake, region, local)
        dfm_weight, learn = engine._dfm_step(d)

        # 4. generator step against the updated discriminators: its losses, then (all finite) its update
        g = engine._generator_losses(label_map, real, fake, region, dfm_weight, local)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        values, checked = engine._loss_values(d, g, dfm_weight)
        # one device-to-host copy an iteration for every logged value (and the learned b per sample)
        scalars, dfm_weights = _to_host(values, dfm_weight if learn else None)
        g_stepped = engine._generator_update(g.loss, d.finite, {k: scalars[k] for k in checked})
        stepped = d.finite or g_stepped  # whether an optimizer step ran (D steps when its loss is finite)
        if engine.scaler is not None and stepped:  # (the grad scaler has inf checks to update from)
            engine.scaler.update()
        engine._set_d_grad(True)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        output: dict[str, Any] = {"image": real, "pred": fake.detach(), "label": batchdata.get("label"), **scalars}
        if output["label"] is None:
            del output["label"]
        if dfm_weights is not None:  # (B,) on the host: decollated, each sample keeps its own b
            output["dfm_weights"] = dfm_weights
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated per sample by MONAI's handler on MODEL_COMPLETED

    def _batch_tensors(self, batchdata: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's ``condition``, ``image`` (the real slice) and ``region`` on the training device, as float
        (channels-last with ``channels_last``)."""
        device, nb = self.state.device, self.non_blocking
        cond = batchdata["condition"].to(device, non_blocking=nb).float()
        real = batchdata["image"].to(device, non_blocking=nb).float()
        region = batchdata["region"].to(device, non_blocking=nb).float()
        if self.channels_last:
            cond, real, region = (t.contiguous(memory_format=torch.channels_last) for t in (cond, real, region))
        return cond, real, region

    def _generator_forward(self, cond: torch.Tensor, real: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Step 1: the generator's output for ``cond`` in float, with ``composite_fake`` composited into the real
        slice (generated inside the region, real outside)."""
        with self._autocast():
            fake = self._g_forward(cond)
        fake = fake.float()
        if self.composite_fake:
            fake = region * fake + (1.0 - region) * real
        return fake

    def _discriminator_step(
        self, label_map: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, region: torch.Tensor,
        local: _LocalBatch | None,
    ) -> _DiscriminatorStep:
        """Step 2: the discriminators' GAN loss and, if it is finite, their backward and optimizer step.

        ``d_loss`` = 0.5 x (loss of the real pair (map, image) against "real" + loss of the fake pair (map,
        detached ``fake``) against "fake", or the region targets with ``d_target="region"``), region-weighted with
        ``region_weighted``; real and fake go through D in one batched forward, and with DiffAugment a sample's
        real and fake pair get the same transform. With a local discriminator the step minimises
        ``d_loss + lambda_local x d_local`` (:meth:`_local_d_loss`). Each network's backward follows its forward
        before the next forward (DistributedDataParallel needs it).
        """
        batch = real.shape[0]
        self._set_d_grad(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            both = torch.cat([torch.cat([label_map, real], 1), torch.cat([label_map, fake.detach()], 1)], 0)
            d_in, weight, fake_targets = self._d_view(self._augment_draw(real), both, region, targets=True)
            feats = self._d_forward(d_in)
            real_feats = [[f[:batch] for f in scale] for scale in feats]
            fake_feats = [[f[batch:] for f in scale] for scale in feats]
            d_loss = 0.5 * (
                losses.gan_loss(real_feats, True, weight, self.gan_mode)
                + losses.gan_loss(fake_feats, False, weight, self.gan_mode, targets=fake_targets)
            )
            d_total = d_loss
            d_local = None
            if local is not None:
                d_local = self._local_d_loss(both, local)
                d_total = d_loss + self.lambda_local * d_local
        finite = bool(torch.isfinite(d_total.detach()))
        if finite:
            self._backward_step(d_total, self.d_optimizer)
        return _DiscriminatorStep(d_loss, d_local, real_feats, fake_feats, weight, finite)

    def _dfm_step(self, d: _DiscriminatorStep) -> tuple[torch.Tensor | None, bool]:
        """Step 3: the DFM weight of each sample, and the DFM net's update (joint stage).

        The weighting net reads the discriminator step's features of the fake pair, detached, and, where it
        learns (a DFM optimizer and more than one scale) and the discriminator's loss was finite, steps to
        *maximise* the DFM objective of the feature-matching values of that same forward (one discriminator
        state; gradients reach the DFM net only).

        Returns:
            ``(dfm_weight, learn)``: the detached weights (``None`` without a DFM net, the plain average of the
            scales) and whether the net learns (its per-sample weights are then logged).
        """
        if self.dfm_net is None:
            return None, False
        real_detached = [[f.detach().float() for f in scale] for scale in d.real_feats]
        fake_detached = [[f.detach().float() for f in scale] for scale in d.fake_feats]
        learn = self.dfm_optimizer is not None and len(d.fake_feats) > 1
        with torch.set_grad_enabled(learn):
            dfm_weight = self.dfm_net(fake_detached)
        if learn and d.finite and self.dfm_optimizer is not None:
            fm_detached = losses.feature_matching(real_detached, fake_detached, self.n_layers_d, d.weight)
            self.dfm_optimizer.zero_grad(set_to_none=True)
            self._backward_step(losses.dfm_weight_objective(fm_detached, dfm_weight), self.dfm_optimizer)
        return dfm_weight.detach(), learn

    def _generator_losses(
        self, label_map: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, region: torch.Tensor,
        dfm_weight: torch.Tensor | None, local: _LocalBatch | None,
    ) -> _GeneratorLosses:
        """Step 4, the generator's loss against the discriminators as updated in step 2 (their weights frozen).

        ``g_gan`` (the fake pair scored as "real") + ``lambda_fm`` x ``g_fm`` (DFM feature matching: ``dfm_weight``
        per sample, or the plain average of the scales without a DFM net) + ``lambda_l1`` x ``g_l1`` (pix2pix), and
        with a local discriminator ``lambda_local`` x its terms (:meth:`_local_g_terms`). Feature matching compares
        the fake pair's features with the real pair's features of the same discriminator state: the real pair goes
        through D again, without gradients (a forward without gradients leaves DDP's gradient reducer alone) and
        under the same autocast. With DiffAugment the fake pair gets a fresh draw, the real pair the same one.
        """
        self._set_d_grad(False)
        self.g_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            g_draw = self._augment_draw(real)
            g_in, g_weight, _ = self._d_view(g_draw, torch.cat([label_map, fake], 1), region)
            g_feats = self._d_forward(g_in)
            g_gan = losses.gan_loss(g_feats, True, g_weight, self.gan_mode)
            g_fm = torch.zeros((), device=fake.device)
            if self.lambda_fm > 0:
                with torch.no_grad():
                    real_in = torch.cat([label_map, real], 1)
                    real_now = self._d_forward(g_draw(real_in) if g_draw is not None else real_in)
                fm = losses.feature_matching(real_now, g_feats, self.n_layers_d, g_weight)
                g_fm = losses.dfm_loss(fm, dfm_weight if dfm_weight is not None else 0.5)
            g_l1 = losses.l1_loss(fake, real) if self.lambda_l1 > 0 else torch.zeros((), device=fake.device)
            g_loss = g_gan + self.lambda_fm * g_fm + self.lambda_l1 * g_l1
            if local is None:
                return _GeneratorLosses(g_loss, g_gan, g_fm, g_l1)
            g_local, g_local_fm, g_local_texture = self._local_g_terms(label_map, real, fake, local)
            g_loss = g_loss + self.lambda_local * (
                g_local + self.lambda_fm * g_local_fm + self.lambda_texture * g_local_texture)
        return _GeneratorLosses(g_loss, g_gan, g_fm, g_l1, g_local, g_local_fm, g_local_texture)

    def _loss_values(
        self, d: _DiscriminatorStep, g: _GeneratorLosses, dfm_weight: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor | float | None], list[str]]:
        """The iteration's logged values by output key, and the keys of the losses that must be finite."""
        values: dict[str, torch.Tensor | float | None] = {
            "loss": g.loss, "d_loss": d.loss, "g_gan": g.gan, "g_fm": g.fm, "g_l1": g.l1,
            "desum_weight": getattr(unwrap(self.generator), "last_desum_weight", None), "dfm_weight": dfm_weight}
        checked = ["loss", "d_loss", "g_gan", "g_fm", "g_l1"]
        if self.local_discriminator is not None:
            values.update(d_local=d.local, g_local=g.local, g_local_fm=g.local_fm)
            checked += ["d_local", "g_local", "g_local_fm"]
            if self.lambda_texture > 0:
                values["g_local_texture"] = g.local_texture
                checked.append("g_local_texture")
        return values, checked

    def _generator_update(self, loss: torch.Tensor, d_finite: bool, checked: dict[str, float]) -> bool:
        """Step 4, the generator's backward and optimizer step (G1's gradients dropped while it is frozen), if the
        discriminator's loss (``d_finite``) and every logged loss (``checked``, on the host) are finite; otherwise
        no step, and ``state.non_finite`` holds ``checked`` for
        :class:`~covid_ct_cgan.engines.handlers.NonFiniteLossGuard`. Returns whether it stepped."""
        if not (d_finite and all(math.isfinite(v) for v in checked.values())):
            self.state.non_finite = checked
            return False
        self._backward_step(loss, self.g_optimizer, self._global_params if self._global_frozen else ())
        return True

    # ---- the local discriminator (lesion inpainting): its crops, its loss in step 2 and its terms in step 4

    def local_crops(self, batchdata: dict[str, Any], region: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """Where this batch's local crops are, as a crop function, and which samples have a region.

        The boxes come from the batch's region as the data loader gave it (on the host: no device
        synchronisation), see :func:`~covid_ct_cgan.networks.discriminator.region_crop_boxes`.

        Args:
            batchdata: the batch (its ``region``).
            region: the region on the training device.

        Returns:
            ``(crop, has_region)``: ``crop(x)`` cuts every sample's box out of ``x`` (B, C, H, W);
            ``has_region`` is ``(B, 1, 1, 1)``, 1 for samples with a region, 0 for the others (their
            local terms get zero weight, see :meth:`local_weights`).
        """
        source = batchdata["region"]
        size = min(self.local_crop, int(region.shape[-2]), int(region.shape[-1]))
        boxes, has_region = region_crop_boxes(torch.as_tensor(source), size, self._crop_rng)

        def crop(x: torch.Tensor) -> torch.Tensor:
            return crop_patches(x, boxes, size)

        return crop, has_region.to(region.device, region.dtype)[:, None, None, None]

    def local_weights(self, region_crop: torch.Tensor, has_region: torch.Tensor) -> list:
        """The local discriminator's patch weights: region masks of the (cropped, possibly augmented) region,
        zero for samples without region.

        Args:
            region_crop: ``(B, 1, s, s)`` the region as the local discriminator sees it.
            has_region: ``(B, 1, 1, 1)`` from :meth:`local_crops`.

        Returns:
            weights nested like the local discriminator's output.
        """
        assert self.local_discriminator is not None, "local weights need a local discriminator"
        masks = unwrap(self.local_discriminator).region_masks(region_crop)
        return [[m * has_region for m in scale] for scale in masks]

    def _local_batch(self, batchdata: dict[str, Any], region: torch.Tensor) -> _LocalBatch | None:
        """This batch's local crops (:meth:`local_crops`, drawn before any network runs) and its cropped region;
        ``None`` without a local discriminator."""
        if self.local_discriminator is None:
            return None
        crop, has_region = self.local_crops(batchdata, region)
        return _LocalBatch(crop, has_region, crop(region))

    def _local_view(
        self, inputs: torch.Tensor, region_crop: torch.Tensor, has_region: torch.Tensor
    ) -> tuple[torch.Tensor, list, AugmentDraw | None]:
        """What the local discriminator sees of ``inputs`` (stacked crops of one batch): ``(inputs, weights, draw)``,
        the inputs and the cropped region through a fresh DiffAugment draw (``None`` when it is off)."""
        draw = self._augment_draw(region_crop)
        if draw is not None:
            inputs, region_crop = draw(inputs), draw.mask(region_crop)
        return inputs, self.local_weights(region_crop, has_region), draw

    def _local_d_loss(self, both: torch.Tensor, local: _LocalBatch) -> torch.Tensor:
        """``d_local`` (in step 2): the local discriminator's GAN loss on the same crops of the real and the fake pair
        (``both``: real pairs, then fake pairs), one batched forward, weighted by the cropped region."""
        batch = both.shape[0] // 2
        local_in, local_weight, _ = self._local_view(
            torch.cat([local.crop(both[:batch]), local.crop(both[batch:])], 0), local.region, local.has_region)
        local_feats = self._ld_forward(local_in)
        return 0.5 * (
            losses.gan_loss([[f[:batch] for f in s] for s in local_feats], True, local_weight, self.gan_mode)
            + losses.gan_loss([[f[batch:] for f in s] for s in local_feats], False, local_weight, self.gan_mode)
        )

    def _local_g_terms(
        self, label_map: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, local: _LocalBatch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(g_local, g_local_fm, g_local_texture)`` (in step 4) on the local discriminator as updated in step 2:
        the fake crop's GAN loss against "real", and, from the real crop through that same state (no gradients,
        the fake crop's DiffAugment draw), feature matching (with ``lambda_fm > 0``) and the Gram-matrix texture
        distance inside the region (with ``lambda_texture > 0``); a term that is off is 0."""
        g_local_in, g_local_weight, g_local_draw = self._local_view(
            local.crop(torch.cat([label_map, fake], 1)), local.region, local.has_region)
        g_local_feats = self._ld_forward(g_local_in)
        g_local = losses.gan_loss(g_local_feats, True, g_local_weight, self.gan_mode)
        g_local_fm = torch.zeros((), device=fake.device)
        g_local_texture = torch.zeros((), device=fake.device)
        if self.lambda_fm > 0 or self.lambda_texture > 0:
            with torch.no_grad():
                real_local_in = local.crop(torch.cat([label_map, real], 1))
                if g_local_draw is not None:
                    real_local_in = g_local_draw(real_local_in)
                real_local = self._ld_forward(real_local_in)
        if self.lambda_fm > 0:
            g_local_fm = losses.feature_matching(real_local, g_local_feats, self.n_layers_d, g_local_weight).mean()
        if self.lambda_texture > 0:
            g_local_texture = losses.texture_loss(real_local, g_local_feats, g_local_weight).mean()
        return g_local, g_local_fm, g_local_texture


def _compiled(module: torch.nn.Module) -> Callable:
    """``torch.compile(module)``: a wrapper that shares the module's parameters and state."""
    return torch.compile(module, backend=COMPILE_BACKEND, dynamic=False)


def _to_host(
    values: dict[str, torch.Tensor | float | None], per_sample: torch.Tensor | None = None
) -> tuple[dict[str, float], torch.Tensor | None]:
    """The mean of every value as a Python float (``nan`` for ``None``), and ``per_sample`` as a host
    float tensor, all tensors copied to the host together."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    parts = [torch.stack([v.detach().float().mean() for v in tensors.values()])] if tensors else []
    if per_sample is not None:
        parts.append(per_sample.detach().float().reshape(-1))
    flat = torch.cat(parts).tolist() if parts else []
    host = dict(zip(tensors, flat[: len(tensors)]))
    scalars = {k: host[k] if k in tensors else (math.nan if v is None else float(v)) for k, v in values.items()}
    return scalars, (torch.tensor(flat[len(tensors):]) if per_sample is not None else None)
