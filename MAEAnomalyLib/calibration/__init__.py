"""Calibration on healthy volumes only: the position reference (``position``), the slice threshold
(``slice_threshold``), the voxel threshold (``voxel_threshold``, read from ``histogram``). What scores the
healthy volumes for them is ``training.calibrate``; ``training.site`` is ``maeanomaly calibrate``."""
