"""Evaluation against labels: slice metrics per cohort (``cohort``), voxel metrics (``voxel_metrics``,
``voxels``)."""
