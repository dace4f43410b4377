"""The one exception type that reaches users as a one-line message."""


class MAEAnomalyError(Exception):
    """A problem with the user's input, reported as ``<path>: <problem>`` without a traceback."""

    def __init__(self, problem: str, path: object = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
