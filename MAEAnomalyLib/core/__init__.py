"""Shared by every method and command: settings (``config``, ``config_rules``), model directories
(``model_io``), shipped models (``shipped``), errors, atomic outputs (``files``), devices (``runtime``) and
SIGTERM (``termination``). Imports nothing else of the library."""
