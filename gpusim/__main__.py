"""`python -m gpusim ...` is the `gpusim` command."""

from gpusim.cli import main

main()
