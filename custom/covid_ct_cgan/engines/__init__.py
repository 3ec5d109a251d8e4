"""The conditional GAN trainer, its handlers and the stage runner.

``amp_by_default``, ``autocast_context``, ``native_bf16_cpu`` (:mod:`covid_ct_cgan.precision`) and
``unwrap`` (:mod:`covid_ct_cgan.networks.wrapping`) live below this package, shared with
:mod:`covid_ct_cgan.inference`; they are named here too, as ``train.yaml`` uses them.
"""

from ..networks.wrapping import unwrap
from ..precision import amp_by_default, autocast_context, native_bf16_cpu
from .batch import CompositeInferer, prepare_condition_batch
from .trainer import ConditionalGanTrainer

__all__ = [
    "CompositeInferer", "ConditionalGanTrainer", "amp_by_default", "autocast_context", "native_bf16_cpu",
    "prepare_condition_batch", "unwrap",
]
