"""Data: reading and validating volumes (``io``), which files a command reads (``inputs``), the one
preprocessing path (``preprocessing``), the on-disk slice cache for training (``slice_cache``, keyed
by ``digest``), and generated volumes for the demo and tests (``synthetic``)."""
