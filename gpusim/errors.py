"""One error type for bad input, so every front end reports file, line and field the same way."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a trace row, a config value, a cluster key.

    ``file`` is the path as the user gave it, ``line`` is 1-based (None when the input has no
    lines, e.g. an environment variable), ``field`` names the offending key or column.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class InputErrors(InputError):
    """Several input errors found in one pass (reported one per line, like pydantic)."""

    def __init__(self, errors: list[InputError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def render(self) -> str:  # type: ignore[override]
        return "\n".join(e.render() for e in getattr(self, "errors", [])) or super().render()
