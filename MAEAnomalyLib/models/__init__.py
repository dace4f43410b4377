"""Networks: the masked autoencoder and the anomaly classifier."""

from .classifier import build_classifier, init_classifier_from_mae
from .mae import MaskedAutoencoder

__all__ = ["MaskedAutoencoder", "build_classifier", "init_classifier_from_mae"]
