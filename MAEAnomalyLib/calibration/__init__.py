"""Calibration on healthy volumes only: the position reference (``position``) and the voxel threshold
(``voxel_threshold``); ``training.calibrate`` drives them."""
