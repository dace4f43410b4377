"""Scoring: per-slice scores and the difference map of a volume (``scores``), the slice table
(``table``), the PNG report (``report``), the files ``score`` writes (``outputs``), and whole cohorts
(``cohort``, with ``cohort_table`` and ``prefetch``)."""
