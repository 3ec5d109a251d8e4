"""The critic test (covid_ct_cgan.evaluation.critic_test): degradations, paired ranking accuracy, and a tiny
no-norm critic that learns to tell mean-filled from real textured crops on images it never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from covid_ct_cgan.evaluation.critic_test import (
    CriticPairs,
    critic_pairs,
    degrade,
    fixed_crops,
    paired_ranking_accuracy,
    train_critic,
)
from covid_ct_cgan.networks.discriminator import LocalDiscriminator


def test_mean_fill_sets_the_region_to_its_mean_and_keeps_the_rest():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    region = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    region[..., 1:3, 1:3] = True  # values 5, 6, 9, 10
    out = degrade(image, region, "mean_fill")
    assert torch.equal(out[region], torch.full((4,), 7.5))
    assert torch.equal(out[~region], image[~region])
    assert torch.equal(degrade(image[0], region[0].float(), "mean_fill"), out[0])  # (C, H, W) too
    empty = torch.zeros_like(region)
    assert torch.equal(degrade(image, empty, "mean_fill"), image)


def test_blur_is_a_sigma_2_gaussian_inside_the_region_only():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64)
    region = torch.zeros(1, 1, 32, 32)
    region[..., 8:20, 10:24] = 1
    out = degrade(image, region, "blur")
    expected = ndimage.gaussian_filter(image[0, 0].numpy(), 2.0, mode="mirror", truncate=3.0)
    inside = region[0, 0].bool().numpy()
    np.testing.assert_allclose(out[0, 0].numpy()[inside], expected[inside], atol=1e-12)
    assert torch.equal(out[region.expand_as(out) == 0], image[region.expand_as(out) == 0])
    flat = torch.full((1, 1, 16, 16), 0.3)
    torch.testing.assert_close(degrade(flat, torch.ones(1, 1, 16, 16), "blur"), flat)
    with pytest.raises(ValueError, match="kind must be one of"):
        degrade(image, region, "noise")


def test_paired_ranking_accuracy_counts_region_patches_and_ties():
    real = [[torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])], [torch.tensor([[[[0.0]]]])]]
    fake = [[torch.tensor([[[[0.0, 2.0], [5.0, 1.0]]]])], [torch.tensor([[[[1.0]]]])]]
    full = [[torch.ones(1, 1, 2, 2)], [torch.ones(1, 1, 1, 1)]]
    acc = paired_ranking_accuracy(real, fake, full)
    assert acc.per_scale == [0.625, 0.0]  # win, tie, loss, win; loss
    assert acc.patches == [4, 1] and acc.overall == pytest.approx(2.5 / 5)
    only = [[torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])], [torch.zeros(1, 1, 1, 1)]]
    acc = paired_ranking_accuracy(real, fake, only)  # the two wins on the diagonal; no region on scale 2
    assert acc.per_scale[0] == 1.0 and np.isnan(acc.per_scale[1]) and acc.overall == 1.0
    with pytest.raises(ValueError):
        paired_ranking_accuracy(real, fake[:1], full)


def _textured(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-hot maps (3 classes), images (smooth structures + fine noise texture) and round regions (class 2)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels, images = [], []
    for _ in range(n):
        label = torch.ones(size, size, dtype=torch.long)
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=gen).tolist()
        r = int(torch.randint(size // 8, size // 4, (1,), generator=gen))
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 2
        phase = torch.rand(2, generator=gen) * 6.28
        structure = 0.3 * torch.sin(xx / 5.0 + phase[0]) * torch.cos(yy / 7.0 + phase[1])
        texture = 0.4 * torch.randn(size, size, generator=gen)
        images.append((structure + texture - 0.2).clamp(-1, 1))
        labels.append(label)
    labels_t = torch.stack(labels)[:, None]
    maps = torch.nn.functional.one_hot(labels_t[:, 0], 3).movedim(-1, 1).float()
    return maps, torch.stack(images)[:, None], (labels_t == 2).float()


def test_a_no_norm_local_critic_tells_mean_filled_from_real_on_held_out_crops():
    train = critic_pairs(*_textured(12, 64, seed=0), "mean_fill")
    heldout = fixed_crops(critic_pairs(*_textured(6, 64, seed=1), "mean_fill"), 32, per_image=2, seed=0)
    assert isinstance(heldout, CriticPairs) and len(heldout) == 12 and heldout.real.shape[-1] == 32
    torch.manual_seed(0)
    d = LocalDiscriminator(4, ndf=8, n_layers=3, norm="none")
    result = train_critic(d, train, heldout, steps=40, eval_every=10, local_crop=32, seed=0)
    assert [s for s, _ in result.trace] == [0, 10, 20, 30, 40]
    assert result.final_accuracy >= 0.8, result.trace
    assert result.first_step is not None and result.first_step <= 40
    assert len(result.losses) == 40 and np.isfinite(result.final_loss)


def test_generator_fakes_composite_the_output_into_the_region():
    from covid_ct_cgan.evaluation.critic_test import generator_fakes

    class Constant(torch.nn.Module):  # a "generator" that draws 0.7 everywhere
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x[:, :1], 0.7) + self.scale

    labels = torch.ones(2, 1, 16, 16, dtype=torch.long)
    labels[:, :, 4:8, 4:8] = 2
    images = torch.linspace(-1, 1, 2 * 256).view(2, 1, 16, 16)
    pairs = generator_fakes(Constant(), labels, images, 4, "map+context", "lesion", dilation=1)
    region = pairs.region.bool()
    assert region.sum() == 2 * 36  # the 4x4 lesion dilated by 1 px
    assert torch.all(pairs.fake[region] == 0.7) and torch.equal(pairs.fake[~region], images[~region])
    assert pairs.maps.shape == (2, 4, 16, 16) and torch.equal(pairs.real, images)


def test_generator_fakes_run_a_crop_trained_generator_in_windows_of_its_crop_size():
    from covid_ct_cgan.evaluation.critic_test import generator_fakes
    from covid_ct_cgan.networks.windows import generate
    from covid_ct_cgan.transforms import make_condition

    class FieldMean(torch.nn.Module):  # a "generator" whose output depends on the field it sees, as instance norm does
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            context = x[:, -1:]
            return self.scale * (context - context.mean(dim=(2, 3), keepdim=True))

    labels = torch.ones(1, 1, 32, 32, dtype=torch.long)
    labels[:, :, 4:12, 4:12] = 2
    images = torch.linspace(-1, 1, 32 * 32).view(1, 1, 32, 32) ** 2
    generator = FieldMean()
    whole = generator_fakes(generator, labels, images, 4, "map+context", "lesion", dilation=1)
    windows = generator_fakes(generator, labels, images, 4, "map+context", "lesion", dilation=1, window=16)
    region = whole.region.bool()
    assert not torch.allclose(whole.fake[region], windows.fake[region])  # the field matters to this generator
    cond, _ = make_condition(labels, images, 4, "map+context", "lesion", 1)
    expected = generate(generator, cond, 16)
    assert torch.allclose(windows.fake[region], expected[region])
