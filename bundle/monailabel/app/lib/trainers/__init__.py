"""Train task: the bundle's GAN training (``train.yaml``) on the datastore's labelled images."""

from .synthesis import SynthesisTraining

__all__ = ["SynthesisTraining"]
