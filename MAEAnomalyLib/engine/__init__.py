"""The training engine every method's stages run on: the stage loop (``loop``), batches and seeds
(``samples``), checkpoints and ``--resume`` (``checkpoint``), torchrun and stop requests (``distributed``)."""
