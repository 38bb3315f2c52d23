"""Generate ``docs/hooks.md``, the hooks reference, from ``dataflex_core.hookspecs``.

Every hookspec gets its exact signature (as written in the source: ``hookspecs.py`` uses
``from __future__ import annotations``, so annotations are kept as their source text), its
pluggy options and its docstring. ``tests/test_docs.py`` checks that the committed page matches
what this script writes, so a new or changed hook without regenerated docs fails the tests.

Usage::

    python tools/gen_hooks_doc.py            # write docs/hooks.md
    python tools/gen_hooks_doc.py --check    # exit 1 if docs/hooks.md is out of date
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "hooks.md"

FAMILIES: tuple[tuple[str, str], ...] = (
    (
        "Registration hooks",
        "Collect-all. Called once when a registry is built; each returns a list of "
        "`ComponentSpec`. Two plugins registering the same `(kind, name)` is a `PluginError` "
        'that names both. A spec\'s `factory` is a lazy `"package.module:Class"` string, so '
        "discovery imports neither torch nor faiss.",
    ),
    (
        "Capability hooks",
        "First result wins (`firstresult=True`). An implementation returns `None` to pass; "
        "one that handles everything marks itself `@hookimpl(trylast=True)` so that more "
        "specific implementations (DeepSpeed ZeRO-3, FSDP) are asked first.",
    ),
    (
        "Event hooks",
        "Collect-all; return values are ignored. Loggers and dashboards observe runs with them.",
    ),
)


def hookspec_functions() -> list[Callable[..., Any]]:
    """Every hookspec of ``dataflex_core.hookspecs``, in source order."""
    from dataflex_core import hookspecs
    from dataflex_core.markers import PROJECT

    marker = f"{PROJECT}_spec"
    return [
        obj
        for name, obj in vars(hookspecs).items()
        if name.startswith("dataflex_") and callable(obj) and hasattr(obj, marker)
    ]


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):  # PEP 563: the source text
        return annotation
    return inspect.formatannotation(annotation)


def render_signature(fn: Callable[..., Any]) -> str:
    """``name(arg: type, ...) -> type``, with annotations as written in the source."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    out = f"{fn.__name__}({', '.join(params)})"
    if sig.return_annotation is not inspect.Signature.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def options(fn: Callable[..., Any]) -> dict[str, Any]:
    """The pluggy hookspec options (``firstresult``, ``historic``, ...)."""
    from dataflex_core.markers import PROJECT

    return dict(getattr(fn, f"{PROJECT}_spec"))


def family(fn: Callable[..., Any]) -> str:
    """The family heading a hook is listed under."""
    if fn.__name__.startswith("dataflex_register_"):
        return FAMILIES[0][0]
    if options(fn).get("firstresult"):
        return FAMILIES[1][0]
    return FAMILIES[2][0]


_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc):`~?([^`]+)`")


def markdown_doc(doc: str) -> str:
    """A docstring as Markdown: Sphinx roles become code spans (``:class:`~a.B``` -> ``B``)."""
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", doc)


def render_hook(fn: Callable[..., Any]) -> str:
    """The Markdown section of one hook."""
    opts = options(fn)
    flags = ["first result wins" if opts.get("firstresult") else "collect-all"]
    if opts.get("historic"):
        flags.append("historic")
    doc = markdown_doc(inspect.getdoc(fn) or "(undocumented)")
    return "\n".join(
        [
            f"### `{fn.__name__}`",
            "",
            "```python",
            f"@hookimpl\ndef {render_signature(fn)}: ...",
            "```",
            "",
            f"*{', '.join(flags).capitalize()}.*",
            "",
            doc,
            "",
        ]
    )


def render_page() -> str:
    """The whole ``docs/hooks.md``."""
    fns = hookspec_functions()
    lines = [
        "<!-- Generated from dataflex_core/hookspecs.py by tools/gen_hooks_doc.py. "
        "Do not edit. -->",
        "",
        "# Hooks reference",
        "",
        "Every DataFlex hook, generated from `dataflex_core.hookspecs`. A plugin implements any "
        "subset of them with the `hookimpl` marker from `dataflex_core`, as module-level "
        "functions or methods, and may accept fewer arguments than the spec lists (pluggy "
        "passes only the ones it names). An argument the spec does not list makes the plugin "
        "fail validation; it is then skipped with a warning (or rejected under "
        "`DATAFLEX_STRICT_PLUGINS=1`). See [Writing a plugin](plugins.md).",
        "",
        "```python",
        "from dataflex_core import hookimpl",
        "```",
        "",
        "| hook | family | first result |",
        "| --- | --- | --- |",
    ]
    for fn in fns:
        first = "yes" if options(fn).get("firstresult") else "no"
        lines.append(f"| `{fn.__name__}` | {family(fn).split()[0].lower()} | {first} |")
    lines.append("")
    for title, intro in FAMILIES:
        members = [fn for fn in fns if family(fn) == title]
        if not members:
            continue
        lines += [f"## {title}", "", intro, ""]
        for fn in members:
            lines.append(render_hook(fn))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, compare) ``docs/hooks.md``."""
    parser = argparse.ArgumentParser(description="Generate docs/hooks.md from the hookspecs.")
    parser.add_argument("--check", action="store_true", help="fail if the page is out of date")
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    page = render_page()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != page:
            print(
                f"{args.output} is out of date; run python tools/gen_hooks_doc.py", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
