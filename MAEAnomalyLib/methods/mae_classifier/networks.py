"""The method's networks and their use, in pipeline order: the masked autoencoder (``mae``), the
paper's reconstruction by masked passes (``reconstruction``), the pseudo-abnormal module
(``pseudo_abnormal``) and the anomaly classifier (``classifier``)."""

from .classifier import build_classifier, init_classifier_from_mae
from .mae import MaskedAutoencoder

__all__ = ["MaskedAutoencoder", "build_classifier", "init_classifier_from_mae"]
