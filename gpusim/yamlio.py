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


def _first_duplicate(root: yaml.Node) -> tuple[tuple[str, ...], int, int] | None:
    """(key path, line, line of the first occurrence) of the first mapping key given twice.

    PyYAML keeps the last of two equal keys without a word; a config that says `poll_interval`
    twice is ambiguous, so it is refused.
    """
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    visited: set[int] = set()  # aliases may share (or loop back to) a node
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges keys in: repeating them is its purpose
                line = key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if ident in seen:
                    return path + (str(key.value),), line, seen[ident]
                seen[ident] = line
                stack.append((value, path + (str(key.value),)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, path + (str(i),)) for i, v in enumerate(node.value))
    return None


def _parse(text: str, source: str, what: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError(f"empty {what}: the file holds no YAML document", file=source)
        dup = _first_duplicate(node)
        if dup is not None:
            path, line, first = dup
            raise InputError(f"key given twice (first on line {first})", file=source,
                             line=line, field=".".join(path))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str) -> tuple[Any, str]:
    """(parsed document, text) of a YAML file every gpusim reader goes through: errors name the
    file and line; an empty file and a key given twice are errors, not silent defaults."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"cannot read {what}: no such file", file=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"cannot read {what}: {reason}", file=source) from None
    try:
        return _parse(text, source, what), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=source,
                         line=mark.line + 1 if mark else None) from None
