"""The configuration reference (``docs/configuration.md``), generated from the config schema so it cannot drift.

Every key of ``workflow/schemas/config.schema.yaml`` becomes a row: its dotted name, type, default, allowed values
and description. ``python -m ferseq.common.config_reference`` rewrites the page; the test suite checks that the
committed page equals a fresh one and that no key lacks a description.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[3]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PAGE = REPO / "docs" / "configuration.md"

HEADER = """# Configuration reference

<!-- Generated from workflow/schemas/config.schema.yaml by `python -m ferseq.common.config_reference`;
do not edit by hand (a test compares this page with a fresh one). -->

A config is a YAML file given with `--configfile` (or the demo's `config.yaml` when none is given). Only
`data.videos`, `data.annotations` and `classes.names` are required; every other key takes the default below,
which is the reference protocol. A wrong key or value stops the run before anything is written, with one line per
problem naming the key. A config given with `--configfile` stands alone: the demo's `config.yaml` is not merged
into it.
"""


def keys(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every key of a schema's ``properties``, depth first, as (dotted name, its schema)."""
    for name, spec in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        yield path, spec
        yield from keys(spec, f"{path}.")


def undescribed(schema: dict[str, Any]) -> list[str]:
    """The dotted names of the keys without a (non-empty) description."""
    return [path for path, spec in keys(schema) if not str(spec.get("description") or "").strip()]


def _value(value: Any) -> str:
    """A value as it is written in a config (``null``, ``true``, ``[1024, 512, 256]``, ``hog``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _type(spec: dict[str, Any]) -> str:
    types = spec.get("type", "any")
    types = types if isinstance(types, list) else [types]
    words = []
    for kind in types:
        if kind == "array" and isinstance(spec.get("items"), dict):
            item = spec["items"].get("type", "any")
            words.append(f"list of {item if isinstance(item, str) else ' or '.join(item)}")
        elif kind == "object" and isinstance(spec.get("additionalProperties"), dict):
            words.append(f"mapping to {spec['additionalProperties'].get('type', 'any')}")
        else:
            words.append(kind)
    return " or ".join(words)


def _bounds(spec: dict[str, Any], what: str = "") -> list[str]:
    parts = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in spec:
            parts.append(f"{what}{sign} {_value(spec[key])}")
    return parts


def _allowed(spec: dict[str, Any]) -> str:
    parts = []
    if "enum" in spec:
        parts.append(", ".join(f"`{_value(v)}`" for v in spec["enum"]))
    parts += _bounds(spec)
    if "pattern" in spec:
        # raw HTML, since a table cell cannot hold a "|" inside a code span
        parts.append(f"matches <code>{html.escape(spec['pattern']).replace('|', '&#124;')}</code>")
    if "minLength" in spec:
        parts.append(f"at least {spec['minLength']} character(s)")
    items = spec.get("items") if isinstance(spec.get("items"), dict) else {}
    if "enum" in items:
        parts.append("each one of " + ", ".join(f"`{_value(v)}`" for v in items["enum"]))
    parts += _bounds(items, "each ")
    if "minItems" in spec and "maxItems" in spec and spec["minItems"] == spec["maxItems"]:
        parts.append(f"exactly {spec['minItems']} items")
    else:
        if "minItems" in spec:
            parts.append(f"at least {spec['minItems']} item(s)")
        if "maxItems" in spec:
            parts.append(f"at most {spec['maxItems']} items")
    if spec.get("uniqueItems"):
        parts.append("no repeats")
    values = spec.get("additionalProperties") if isinstance(spec.get("additionalProperties"), dict) else {}
    parts += _bounds(values, "each value ")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(schema: dict[str, Any]) -> str:
    """The reference page: one section per top-level group (top-level scalars first), one table row per key."""
    lines = [HEADER]
    top = [(n, s) for n, s in schema["properties"].items() if "properties" not in s]
    groups = [(n, s) for n, s in schema["properties"].items() if "properties" in s]
    sections = [("Top level", "", top)] + [
        (f"`{name}`", spec.get("description", ""), list(keys(spec, f"{name}."))) for name, spec in groups]
    for title, about, rows in sections:
        lines += [f"## {title}", ""]
        if about:
            lines += [_cell(about)[0].upper() + _cell(about)[1:] + ".", ""]
        lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for path, spec in rows:
            parent = schema
            for part in path.split(".")[:-1]:
                parent = parent["properties"][part]
            is_required = path.split(".")[-1] in set(parent.get("required", []))
            default = "required" if is_required else (f"`{_value(spec['default'])}`" if "default" in spec else "")
            lines.append(f"| `{path}` | {_type(spec)} | {default} | {_cell(_allowed(spec))} | "
                         f"{_cell(spec.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines)


def load(path: Path = SCHEMA) -> dict[str, Any]:
    """The config schema as a dict."""
    return yaml.safe_load(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    """Write the reference page (default ``docs/configuration.md``); ``--check`` only compares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(PAGE), help="the page to write (default docs/configuration.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from a fresh one")
    args = parser.parse_args(argv)
    schema = load()
    if missing := undescribed(schema):
        parser.exit(1, "keys without a description in the schema: " + ", ".join(missing) + "\n")
    text = render(schema)
    out = Path(args.output)
    if args.check:
        same = out.is_file() and out.read_text() == text
        if not same:
            print(f"{out} is out of date: run python -m ferseq.common.config_reference")
        return 0 if same else 1
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
