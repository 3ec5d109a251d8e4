"""The conditional GAN trainer, its handlers and the stage runner."""

from .batch import CompositeInferer, prepare_condition_batch
from .trainer import ConditionalGanTrainer, autocast_context, unwrap

__all__ = ["CompositeInferer", "ConditionalGanTrainer", "autocast_context", "prepare_condition_batch", "unwrap"]
