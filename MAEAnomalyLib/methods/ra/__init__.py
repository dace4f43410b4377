"""Reversed Autoencoders (Bercea et al.): a Soft-IntroVAE (``network``) trained with the reversed embedding
loss (``losses``, ``stages``) reconstructs a pseudo-healthy slice; the map compares the two after adaptive
histogram equalisation (``anomaly_map``, ``scorer``)."""
