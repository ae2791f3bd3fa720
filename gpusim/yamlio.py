"""YAML reading that remembers where each key sits, so errors can name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpusim.errors import InputError


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """YAML key path -> 1-based line; list items are addressed by their index."""
    out: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = path + (str(i),)
                out[key] = v.start_mark.line + 1
                walk(v, key)

    walk(root, ())
    return out


def line_of(lines: dict[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    """Line of the nearest enclosing key of `path` that appears in the file."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def read_yaml(path: str | Path, what: str) -> tuple[Any, str]:
    """(parsed document, text); errors name the file and line."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror or exc}", file=source) from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=source,
                         line=mark.line + 1 if mark else None) from None
