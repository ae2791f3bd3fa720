"""Exit codes: one meaning for every `gpusim` command (README, "Exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0             # pass, or done
    FAIL = 1           # a judged failure: a gate fails, nothing feasible, validation FAILS
    BAD_INPUT = 2      # a bad file, row, field, option or output path
    INCONCLUSIVE = 3   # too little data to judge (validate), insufficient data (canary)
    MARGINAL = 4       # canary judge: neither clearly pass nor fail
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


EXIT_CODES_HELP = ("Exit codes: 0 pass or done, 1 a judged failure, 2 bad input, "
                   "3 inconclusive or insufficient data, 4 marginal (canary judge), "
                   "130 interrupted.")
