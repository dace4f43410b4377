"""Scoring: per-slice scores and the difference map of a volume (``scores``), the slice table
(``table``), the PNG report (``report``) and the files ``score`` writes (``outputs``)."""
