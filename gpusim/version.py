"""The version of gpusim (one place; results record it)."""

__version__ = "0.1.0"
