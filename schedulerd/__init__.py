"""schedulerd: the task manager of a digital-asset repository."""

__version__ = "0.1.0"
