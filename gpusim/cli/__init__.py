"""The `gpusim` command: one typer app in small modules (the top floor: it alone may import
advisor). `main()` is the console script."""

from __future__ import annotations

from gpusim.cli.app import app


def main() -> None:
    from gpusim.cli.common import main as run

    run(app)


__all__ = ["app", "main"]
