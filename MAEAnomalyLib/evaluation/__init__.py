"""Evaluation against labels: slice metrics per cohort (``cohort``) with intervals from a bootstrap over
patients (``bootstrap``), and voxel metrics (``voxel_metrics``, ``voxels``)."""
