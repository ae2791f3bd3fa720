"""The `gpusim` command: one typer app in small modules (the top floor: it alone may import
advisor). `main()` is the console script."""

from __future__ import annotations

import copy
import sys

import typer

from gpusim.cli.app import app


def main() -> None:
    import gc

    import gpusim.engines
    from gpusim.cli.common import main as run

    gpusim.engines.FREEZE_AFTER_IMPORT = True  # this process ends after one command
    try:
        run(app_for(sys.argv[1:]))
    finally:
        # The process is about to end: spare its last garbage collections the walk through
        # numba's object graph (0.3-0.5 s of CPU after a simulation). Only cyclic garbage is
        # left uncollected, and the process's exit frees it anyway; atexit handlers still run.
        gc.freeze()


def app_for(args: list[str]) -> typer.Typer:
    """`app` cut down to the one command or command group that `args` starts with.

    Before it parses anything, typer turns every command of the app it runs into a click command
    (their parameters, help texts, types): 0.05-0.08 s on a 2-core VM for all of gpusim's, a
    tenth of `gpusim simulate`'s start, for a run that uses one. A command line that does not
    start with a command's exact name (`gpusim`, `gpusim --help`, a misspelt name that click
    answers with the close ones) gets the whole app, so help and errors list every command."""
    if not args:
        return app
    from typer.main import get_command_name
    from typer.models import TyperInfo
    cmds = [c for c in app.registered_commands  # a command's name, or its function's
            if (c.name or get_command_name(c.callback.__name__)) == args[0]]  # type: ignore
    groups = [g for g in app.registered_groups if g.name == args[0]]
    if len(cmds) + len(groups) != 1:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = cmds, groups
    if cmds:  # typer runs an app of one command as that command: keep the `gpusim NAME` level
        one.registered_callback = TyperInfo(callback=_no_options)
    return one


def _no_options() -> None:
    """The group level of `gpusim NAME`: no options of its own, nothing to do."""


__all__ = ["app", "app_for", "main"]
