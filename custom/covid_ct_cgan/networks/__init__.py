"""Generators, discriminators and the DESUM / DFM weighting nets.

The proposed model and the two baselines are built from the same parts:

- proposed: ``GlobalLocalGenerator(desum="dynamic")``, ``MultiResolutionDiscriminator(num_d=2)``,
  ``DfmWeight(mode="dynamic")``;
- ``pix2pixhd``: ``GlobalLocalGenerator(desum="sum")``, ``MultiResolutionDiscriminator(num_d=2)``,
  ``DfmWeight(mode="equal")``;
- ``pix2pix``: ``UNetGenerator(norm="batch", use_bias=False)``, ``MultiResolutionDiscriminator(num_d=1,
  norm="batch", padding=1, use_bias=False)`` (the 70x70 PatchGAN), cross-entropy GAN loss, L1 loss weight 100.
"""

from .blocks import ResnetBlock, downsample, norm_layer
from .discriminator import DfmWeight, MultiResolutionDiscriminator, NLayerDiscriminator, in_channels_for
from .generator import DesumWeight, GlobalGenerator, GlobalLocalGenerator, LocalEnhancer, UNetGenerator
from .handover import load_generator_part
from .param_count import count_parameters
from .recording import build_recorded, recorded_arguments, records_arguments
from .wrapping import unwrap

__all__ = [
    "DesumWeight",
    "DfmWeight",
    "GlobalGenerator",
    "GlobalLocalGenerator",
    "LocalEnhancer",
    "MultiResolutionDiscriminator",
    "NLayerDiscriminator",
    "ResnetBlock",
    "UNetGenerator",
    "build_recorded",
    "count_parameters",
    "downsample",
    "in_channels_for",
    "load_generator_part",
    "norm_layer",
    "recorded_arguments",
    "records_arguments",
    "unwrap",
]
