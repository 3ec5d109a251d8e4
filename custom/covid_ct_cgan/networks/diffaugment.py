"""Differentiable augmentation of the discriminators' inputs: DiffAugment's translation and cutout (Zhao et al. 2020).

A discriminator trained on few images memorises them; augmenting only the real
images would teach the generator the augmentation. DiffAugment instead
transforms *every* input of the discriminator, real and fake, in its own step
and in the generator's, with operations the generator's gradient passes
through. The trainer (:class:`~covid_ct_cgan.engines.ConditionalGanTrainer`,
``d_augment``) draws one transform per sample (:meth:`DiffAugment.draw`) and
applies it to the sample's real and fake pair alike (label map and image
concatenated), so the two stay aligned pixel for pixel, and to the region
(:meth:`AugmentDraw.mask`), from which the region weights and targets of the
losses are then computed:

- ``translation``: the pair moves by a whole number of pixels, up to
  ``translation_ratio`` (1/8) of the side in each direction; the pixels that
  come in repeat the border (air and background on a CT slice; zeros would be
  a grey frame in the image's [-1, 1] range). The region moves with it.
- ``cutout``: one square of ``cutout_ratio`` (1/2) of the side, centred
  anywhere (it may stick out of the image), is set to 0 in every channel. The
  region is set to 0 there too: a cut pixel shows the same 0 in the real and
  the fake pair, so it is no longer a synthesised pixel, and a patch that sees
  only cut region pixels gets no region weight and the real target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

POLICIES: tuple[str, ...] = ("translation", "cutout")


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """The augmentations named by ``policy``, in the order they are applied (translation before cutout).

    Args:
        policy: ``""`` or ``None`` (off), a comma-separated string (``"translation,cutout"``) or a list of names.

    Returns:
        the distinct names, in :data:`POLICIES` order.

    Raises:
        TypeError: ``policy`` is neither a string nor a sequence of strings.
        ValueError: an unknown name.
    """
    if policy is None:
        return ()
    if isinstance(policy, str):
        names = [p.strip() for p in policy.split(",")]
    elif isinstance(policy, Sequence) and all(isinstance(p, str) for p in policy):
        names = [p.strip() for p in policy]
    else:
        raise TypeError(f"d_augment: must be a string or a list of strings, got {policy!r}")
    names = [n for n in names if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"d_augment: unknown augmentation {', '.join(map(repr, unknown))}; expected names from {POLICIES}")
    return tuple(p for p in POLICIES if p in names)


class AugmentDraw:
    """One drawn transform per sample; the same for every tensor it is applied to.

    Args:
        batch: the number of samples ``B`` it was drawn for.
        height: image height.
        width: image width.
        shifts: per sample ``(dy, dx)``, how far the content moves down and right; ``None``: no translation.
        cuts: per sample ``(top, bottom, left, right)`` of the zeroed rectangle (clipped to the image);
            ``None``: no cutout.
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        shifts: list[tuple[int, int]] | None = None,
        cuts: list[tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.batch, self.height, self.width = int(batch), int(height), int(width)
        self.shifts = shifts
        self.cuts = cuts

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[0] % self.batch or tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"expected (k * {self.batch}, C, {self.height}, {self.width}) for a draw of {self.batch} samples, "
                f"got {tuple(x.shape)}"
            )

    def _translate(self, x: Tensor) -> Tensor:
        if not self.shifts:
            return x
        reach = max(max(abs(dy), abs(dx)) for dy, dx in self.shifts)
        if reach == 0:
            return x
        padded = nn.functional.pad(x, (reach, reach, reach, reach), mode="replicate")
        rows = []
        for i in range(x.shape[0]):  # row i holds sample i % batch (the real pairs, then the fake pairs)
            dy, dx = self.shifts[i % self.batch]
            top, left = reach - dy, reach - dx  # out[y, x] = in[y - dy, x - dx]
            rows.append(padded[i, :, top : top + self.height, left : left + self.width])
        return torch.stack(rows)

    def keep(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """``(B, 1, H, W)``: 0 inside each sample's cut rectangle, 1 elsewhere; ``None`` without cutout."""
        if not self.cuts:
            return None
        bounds = torch.tensor(self.cuts, device=device)  # (B, 4)
        ys = torch.arange(self.height, device=device)
        xs = torch.arange(self.width, device=device)
        inside_y = (ys[None] >= bounds[:, 0:1]) & (ys[None] < bounds[:, 1:2])  # (B, H)
        inside_x = (xs[None] >= bounds[:, 2:3]) & (xs[None] < bounds[:, 3:4])  # (B, W)
        cut = inside_y[:, :, None] & inside_x[:, None, :]
        return (~cut).to(dtype)[:, None]

    def _cut(self, x: Tensor) -> Tensor:
        keep = self.keep(x.device, x.dtype)
        if keep is None:
            return x
        return x * keep.repeat(x.shape[0] // self.batch, 1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        """Augment a batch of discriminator inputs, differentiably.

        Args:
            x: ``(k * B, C, H, W)``: ``k`` batches of the same ``B`` samples stacked (the real pairs, then the
                fake pairs); row ``i`` gets sample ``i % B``'s transform.

        Returns:
            tensor shaped like ``x``.

        Raises:
            ValueError: ``x``'s shape does not fit the draw.
        """
        self._check(x)
        return self._cut(self._translate(x))

    def mask(self, region: Tensor) -> Tensor:
        """Move a region mask with the inputs: translated the same way, 0 where cut.

        Args:
            region: ``(k * B, 1, H, W)`` values in ``[0, 1]``.

        Returns:
            tensor shaped like ``region``.

        Raises:
            ValueError: ``region``'s shape does not fit the draw.
        """
        return self(region)


class DiffAugment:
    """Draws DiffAugment's translation and cutout for the discriminators' inputs, from its own random stream.

    Args:
        policy: the augmentations, see :func:`parse_policy` (``""``: off, every draw is the identity).
        translation_ratio: largest shift as a fraction of the side (DiffAugment: 1/8).
        cutout_ratio: side of the cut square as a fraction of the image's side (DiffAugment: 1/2).
        seed: seed of its ``torch.Generator``; default ``torch.initial_seed()`` (``set_determinism``'s seed), so
            its draws shift no other random draw of the run.

    Raises:
        ValueError: an unknown policy name, or a ratio outside ``(0, 1]``.
    """

    def __init__(
        self,
        policy: str | Sequence[str] | None = "",
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        self.policy = parse_policy(policy)
        for name, ratio in (("translation_ratio", translation_ratio), ("cutout_ratio", cutout_ratio)):
            if not 0 < ratio <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {ratio}")
        self.translation_ratio = float(translation_ratio)
        self.cutout_ratio = float(cutout_ratio)
        self.generator = torch.Generator().manual_seed((torch.initial_seed() if seed is None else int(seed)) % 2**63)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return bool(self.policy)

    def _randint(self, low: int, high: int, n: int) -> list[int]:
        """``n`` whole numbers in ``[low, high)``."""
        return torch.randint(low, high, (n,), generator=self.generator).tolist()

    def draw(self, batch: int, height: int, width: int) -> AugmentDraw:
        """One transform per sample (host-side numbers: no device synchronisation).

        Args:
            batch: samples ``B``.
            height: image height.
            width: image width.

        Returns:
            the draw; apply it to each of the discriminator's inputs of this step.
        """
        shifts = cuts = None
        if "translation" in self.policy:
            reach_y, reach_x = int(height * self.translation_ratio + 0.5), int(width * self.translation_ratio + 0.5)
            shifts = list(zip(self._randint(-reach_y, reach_y + 1, batch), self._randint(-reach_x, reach_x + 1, batch)))
        if "cutout" in self.policy:
            size_y, size_x = int(height * self.cutout_ratio + 0.5), int(width * self.cutout_ratio + 0.5)
            # centres anywhere in the image (DiffAugment's range): a square at the border is partly outside
            centre_y = self._randint(0, height + (1 - size_y % 2), batch)
            centre_x = self._randint(0, width + (1 - size_x % 2), batch)
            cuts = []
            for cy, cx in zip(centre_y, centre_x):
                top, left = cy - size_y // 2, cx - size_x // 2
                cuts.append((max(top, 0), min(top + size_y, height), max(left, 0), min(left + size_x, width)))
        return AugmentDraw(batch, height, width, shifts, cuts)
