"""The command line: ``python -m MAEAnomalyLib`` (``main``), cohort scoring (``cohort``), the model
commands (``models``) and the demo (``demo``)."""
