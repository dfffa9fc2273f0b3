"""Reading a YAML file a person wrote (a training config, a campaign file) into a mapping.

One reader for every such file, so that each refuses the same things in one line naming the file
and the place: a path that is a folder, bytes that are not text, a syntax error (with its line
and column), a key given twice in one mapping (PyYAML keeps the last one without a word: a
campaign with ``software:`` twice ran the second one only) and a top level that is not a
mapping. The caller passes its own error class, so the CLI's message names its own kind of
file and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mcel_train.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated within one mapping."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:  # an unhashable key: the base constructor says so
            break
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# Numbers in exponent form without a dot (1e-3, 2E5) are floats, as in YAML 1.2: PyYAML follows
# YAML 1.1, which reads them as text, and `lr: 1e-3` was refused as "not a valid number".
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+|[0-9]*\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def load_text(text: str) -> Any:
    """One YAML value written by a person (an override's ``value``), read as files are read."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A PyYAML error as a short phrase with its place: ``<problem> at line L, column C``."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem}{where}"


def read_mapping(path: str | Path, error: type[UserError], what: str, example: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (empty file: ``{}``).

    ``what`` names the file in messages ("config file", "campaign file"), ``example`` where a
    valid one is found; every problem raises ``error`` with one line."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder; give the YAML file (see {example})")
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a text file; it must be YAML (see {example})") from None
    if "\0" in text:
        raise error(f"{what} {path} holds a NUL byte; it must be YAML text (see {example})")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{what} {path}: the top level must be a mapping of keys to values, got a "
                    f"{type(raw).__name__} (see {example})")
    return raw


__all__ = ["read_mapping", "yaml_problem"]
