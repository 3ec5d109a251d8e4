"""The conditional GAN trainer, its handlers and the stage runner."""

from .batch import CompositeInferer, prepare_condition_batch
from .trainer import ConditionalGanTrainer, amp_by_default, autocast_context, native_bf16_cpu, unwrap

__all__ = [
    "CompositeInferer", "ConditionalGanTrainer", "amp_by_default", "autocast_context", "native_bf16_cpu",
    "prepare_condition_batch", "unwrap",
]
