"""The Slicer-only part of the module: MRML logic (``logic``, ``results``, ``volumes``), the background
scoring process (``background``) and the dependency installer (``dependencies``). The work itself is
done by the pure-Python library ``MAEAnomalyLib``."""
