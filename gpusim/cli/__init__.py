"""The `gpusim` command: one typer app in small modules (the top floor: it alone may import
advisor). `main()` is the console script."""

from __future__ import annotations

from gpusim.cli.app import app


def main() -> None:
    import gc

    from gpusim.cli.common import main as run

    try:
        run(app)
    finally:
        # The process is about to end: spare its last garbage collections the walk through
        # numba's object graph (0.3-0.5 s of CPU after a simulation). Only cyclic garbage is
        # left uncollected, and the process's exit frees it anyway; atexit handlers still run.
        gc.freeze()


__all__ = ["app", "main"]
