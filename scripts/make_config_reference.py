"""Writes docs/config.md, the configuration reference, from the settings themselves.

Every table of pipeline.toml is a dataclass (`cli/config.py`'s `Config` names them; the classes live in
`cache/settings.py` and each stage's `settings.py`), and so are the options of each dataset kind. For each
key the reference gives its type and default (from the dataclass), what it accepts (a `Literal` type's
values, and the words each check carries: `cache.settings.allows`), and its meaning: the comment beside
the field in the code (with the comment lines under it that continue it). A table's meaning is its class
docstring. A field or table without one stops the script, so the reference always covers every key.

    python scripts/make_config_reference.py      # rewrites docs/config.md; tests/test_config_reference.py
                                                 # fails when the file differs from what this makes
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parents[1] / "docs" / "config.md"
HEADER = """\
# Configuration reference

<!-- Made by scripts/make_config_reference.py from the settings in the code; edit those, then run it. -->

`pipeline.toml` (or the file `--config` names) has one table per part of the pipeline. Every key may
be left out (it takes its default); an unknown key, a value of the wrong type or one it does not
accept stops the command before any work, with one line naming the key. A command-line option of a
stage overrides the key of the same name in that stage's table (`pipeline fit --epochs 50` sets
`[fit] epochs`). `pipeline list` prints the names the config can use (dataset kinds, variants,
presets, methods, adapters, metrics).
"""


def _source_class(cls: type, name: str) -> type:
    """The class of `cls`'s hierarchy that declares field `name` (where its comment is)."""
    return next(c for c in cls.__mro__ if name in inspect.get_annotations(c))


def _class_node(cls: type) -> tuple[ast.ClassDef, list[str]]:
    source = textwrap.dedent(inspect.getsource(cls))
    return ast.parse(source).body[0], source.splitlines()


def _comments(lines: list[str]) -> dict[int, tuple[int, str]]:
    """Line number (1-based) -> (column, text) of each comment in `lines`."""
    tokens = tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline)
    return {t.start[0]: (t.start[1], t.string.lstrip("#").strip()) for t in tokens if t.type == tokenize.COMMENT}


def field_meaning(cls: type, name: str) -> str:
    """The comment beside field `name` (one line: ruff's formatter leaves no continuation comments)."""
    node, lines = _class_node(_source_class(cls, name))
    comments = _comments(lines)
    assign = next(n for n in node.body if isinstance(n, ast.AnnAssign) and n.target.id == name)
    parts = [comments[i][1] for i in range(assign.lineno, assign.end_lineno + 1) if i in comments]
    if not parts:
        raise SystemExit(f"{cls.__module__}.{cls.__name__}.{name} has no comment beside it: say what it means")
    return " ".join(parts)


def table_meaning(cls: type) -> str:
    doc = ast.get_docstring(_class_node(cls)[0])
    if not doc:
        raise SystemExit(f"{cls.__module__}.{cls.__name__} has no docstring: say what the table is for")
    return " ".join(doc.split())


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return json.dumps(value)


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0]).__name__
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    return tp.__name__


def _accepts(f: Field, tp: Any) -> str:
    words = (
        [f"one of {', '.join(_toml(v) for v in typing.get_args(tp))}"]
        if typing.get_origin(tp) is typing.Literal
        else []
    )
    return "; ".join(words + [check.allowed for check in f.metadata.get("checks", ())])


def _cell(text: str) -> str:
    """Text for a table cell: `|` escaped, and `<` outside code spans (Markdown would take `<root>` for HTML)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def key_table(cls: type) -> list[str]:
    """A Markdown table of `cls`'s keys: type, default, what it accepts, meaning."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
    for f in fields(cls):
        if f.init:
            rows.append(
                "| "
                + " | ".join(
                    [
                        f"`{f.name}`",
                        _type_name(hints[f.name]),
                        f"`{_toml(_default(f))}`",
                        _cell(_accepts(f, hints[f.name])),
                        _cell(field_meaning(cls, f.name)),
                    ]
                )
                + " |"
            )
    return rows


def text() -> str:
    """docs/config.md as the settings in the code make it."""
    from zoomshot.cli.config import Config
    from zoomshot.extract.settings import DATASET_KINDS

    out = [HEADER]
    hints = typing.get_type_hints(Config)
    for f in fields(Config):
        tp = hints[f.name]
        many = typing.get_origin(tp) is list
        cls = typing.get_args(tp)[0] if many else tp
        out += [f"## [{'[' * many}{f.name}{']' * many}]", "", table_meaning(cls), "", *key_table(cls), ""]
    out += ["## Dataset options by kind", "", "`[[datasets]] options` holds the options of the dataset's `kind`:", ""]
    kinds: dict[type, list[str]] = {}
    for kind, cls in DATASET_KINDS.items():
        kinds.setdefault(cls, []).append(kind)
    for cls, names in kinds.items():
        out += [f"### kind = {', '.join(f'`{_toml(n)}`' for n in names)}", "", table_meaning(cls), ""]
        out += [*key_table(cls), ""] if fields(cls) else []
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    FILE.write_text(text())
    print(f"wrote {FILE}")


if __name__ == "__main__":
    main()
