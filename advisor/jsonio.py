"""Reading the advisor's own JSON documents back (rec.json, plan.json, ...)."""

from __future__ import annotations

import json
from typing import Any

from gpusim import InputError


def read_schema_doc(path: str, schema: str) -> dict[str, Any]:
    """The JSON object in `path`, which must name `schema`; else an InputError naming the file
    (and the line of a JSON syntax error, or the field `schema`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON: {err.msg}", file=path, line=err.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not JSON: not UTF-8 text", file=path) from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"expected schema {schema}, got {got!r}", file=path, field="schema")
    return doc
