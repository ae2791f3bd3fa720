"""gpusim: a discrete-event model of YiVideo's Redis GPU lock."""

__version__ = "0.1.0"
