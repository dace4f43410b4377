"""MAEAnomaly: unsupervised anomaly detection in medical volumes with masked autoencoders
(Georgescu, KES 2023). Pure Python; the Slicer module is a thin layer on top."""

__version__ = "0.1.0"
