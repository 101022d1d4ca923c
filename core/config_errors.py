"""Configuration mistakes in the words of the administrator who made them.

pydantic speaks of "extra inputs" and "valid integers" and tomllib keeps no positions, so
this module finds the line of a key in the file itself, says what is wrong in plain words and
suggests the closest known name for a misspelt key or environment variable.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

ENV_PREFIX = "PNEUMOTRIAGE_"

_HEADER = re.compile(r"^\s*\[\s*([^\[\]=]+?)\s*\]\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(r"^\s*([\w\-\"'. ]+?)\s*=")
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")

# pydantic error types, in words; {…} are filled from the error's context.
_PLAIN = {
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": 'expected text in quotes, like "CR"',
    "list_type": 'expected a list, like ["CR", "DX"]',
    "path_type": 'expected a folder or file path in quotes, like "var/storage"',
    "time_parsing": "expected a local time as HH:MM, for example 06:00",
    "time_type": "expected a local time as HH:MM, for example 06:00",
    "greater_than": "must be more than {gt:g}",
    "greater_than_equal": "must be at least {ge:g}",
    "less_than": "must be less than {lt:g}",
    "less_than_equal": "must be at most {le:g}",
}


def closest(name: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _normal(key: str) -> str:
    """TOML allows `"dicom" . port`; compare keys as plain dotted names."""
    return re.sub(r"[\s\"']", "", key)


def line_of(text: str, dotted: str) -> int | None:
    """The line that sets `dotted` (a table header, a key in its table, or a dotted key),
    else the line of its nearest enclosing table that the file names."""
    while dotted:
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = name = _normal(header.group(1))
            else:
                assignment = _ASSIGNMENT.match(line)
                if not assignment:
                    continue
                name = ".".join(filter(None, (table, _normal(assignment.group(1)))))
            if name == dotted or name.startswith(dotted + "."):
                return number
        dotted = dotted.rpartition(".")[0]
    return None


def shown(value: Any) -> str:
    """A value as it would be written in the file, without any password a URL holds."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = _PASSWORD.sub(r"\1***@", text)
    return json.dumps(text) if isinstance(value, str) else text


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _problem(item: ErrorDetails, known_keys: Mapping[str, list[str]]) -> str:
    loc = [str(part) for part in item["loc"] if isinstance(part, str)]
    kind = item["type"]
    sections = [name for name in known_keys if "." not in name]
    if kind == "extra_forbidden" and len(loc) == 1:
        guess = closest(loc[0], sections)
        if guess:
            return f"unknown section; did you mean [{guess}]?"
        return f"unknown section; the sections are {', '.join(sections)}"
    if kind == "extra_forbidden":
        # The innermost known table holding the key ("training.augmentations" for a key of
        # [training.augmentations.site]; table names within it are the site's own).
        table = next(
            (
                ".".join(loc[:n])
                for n in range(len(loc) - 1, 0, -1)
                if ".".join(loc[:n]) in known_keys
            ),
            loc[0],
        )
        keys = known_keys.get(table, [])
        guess = closest(loc[-1], keys)
        if guess:
            return f'unknown key; did you mean "{guess}"?'
        return f"unknown key; [{'.'.join(loc[:-1])}] has {', '.join(keys)}"
    if kind == "model_type":
        return f"expected a section [{loc[0]}] with its keys below it"
    if kind == "value_error":
        return str(item.get("ctx", {}).get("error", item["msg"]))
    if kind in _PLAIN:
        return _PLAIN[kind].format(**item.get("ctx", {}))
    return item["msg"]


def describe(
    error: ValidationError,
    file: Path | None,
    text: str,
    environ: Mapping[str, str],
    known_keys: Mapping[str, list[str]],
) -> list[str]:
    """One line per mistake: key, value, where it was set, and what is wrong."""
    lines = []
    for item in error.errors():
        parts = [part for part in item["loc"] if isinstance(part, str)]
        key = ".".join(parts)
        index = next((part for part in item["loc"] if isinstance(part, int)), None)
        variable = env_name(*parts[:2]) if len(parts) >= 2 else ""
        if variable in environ:
            where = f"set by {variable}"
        else:
            number = line_of(text, key)
            where = f"{file}, line {number}" if number else f"{file or 'embedded defaults'}"
        subject = f"[{key}]" if len(parts) == 1 else f"{key} = {shown(item['input'])}"
        if index is not None:
            subject = f"{key}[{index}] = {shown(item['input'])}"
        lines.append(f"{subject} ({where}): {_problem(item, known_keys)}")
    return lines


def unknown_variables(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """A misspelt variable would silently change nothing, so it is refused with a guess."""
    known = sorted(known)
    lines = []
    for name in names:
        guess = closest(name, known)
        hint = f"; did you mean {guess}?" if guess else ""
        lines.append(f"unknown configuration variable {name}{hint}")
    return lines
