"""MkDocs hook: pages that are generated from the code, so they cannot drift from it.

``<!-- config-reference -->`` becomes a table of every config field (its dotted name, type, default
and the docstring written under it in ``spcl/config.py``); ``<!-- cli-help COMMAND -->`` becomes the
``--help`` text of that command (``spcl`` alone for the top level).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import typing

_HELP = re.compile(r"<!-- cli-help ?([a-z-]*) -->")


def _type_name(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(hint))
    text = getattr(hint, "__name__", None) or str(hint)
    return f"`{text.replace('typing.', '').replace('|', '/')}`"


def config_reference() -> str:
    from spcl.config import leaf_fields

    rows = ["| field | type | default | what it does |", "| --- | --- | --- | --- |"]
    for key, hint, default, doc in leaf_fields():
        shown = "" if default is None else f"`{list(default) if isinstance(default, tuple) else default}`"
        text = " ".join(doc.split()).replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(hint)} | {shown} | {text} |")
    return "\n".join(rows)


def cli_help(command: str) -> str:
    from spcl.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same width on every machine
    parser = build_parser()
    argv = [command, "--help"] if command else ["--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    return "```text\n" + out.getvalue().rstrip() + "\n```"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' hook signature)
    if "<!-- config-reference -->" in markdown:
        markdown = markdown.replace("<!-- config-reference -->", config_reference())
    return _HELP.sub(lambda m: cli_help(m.group(1)), markdown)
