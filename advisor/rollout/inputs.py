"""The rollout's small YAML inputs (--stages, --metrics) read into pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from gpusim import InputError, key_lines, line_of, read_yaml

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: str | Path, model: type[M], what: str, expected: str) -> M:
    """`model` built from the YAML mapping in `path`; a bad value is an InputError naming the
    file, the line of its key and the field (`what` names the file in read_yaml's errors,
    `expected` says what the mapping should hold)."""
    data, text = read_yaml(path, what)
    if not isinstance(data, dict):
        raise InputError(f"expected a YAML mapping {expected}", file=str(path), line=1)
    try:
        return model(**data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = tuple(str(p) for p in e["loc"])
        raise InputError(f"{e['msg']} (got {e.get('input')!r})", file=str(path),
                         line=line_of(key_lines(text), loc), field=".".join(loc) or None) from None
