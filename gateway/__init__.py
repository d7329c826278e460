"""commonwatt: the operations and energy gateway of a shared workshop."""

__version__ = "0.1.0"
