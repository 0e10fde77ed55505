"""The one exception type every checkpoint problem raises."""


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model (message says why)."""
