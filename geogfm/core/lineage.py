"""Which package files a stage runs: the static import closure of ``geogfm <stage>``.

The Snakefile makes these files rule inputs and ``dvc.yaml`` lists them as stage deps, so that
editing code a stage runs reruns that stage, and only that stage and what follows it.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["stage_code"]


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def stage_code(stage: str, root: str | Path = ".") -> list[str]:
    """The geogfm source files ``geogfm <stage>`` imports, directly or not, CLI included.

    Args:
        stage: a stage name, e.g. ``"tile_cache"``.
        root: the project root (the folder holding ``geogfm/``).

    Returns:
        Sorted paths relative to ``root``, parent packages' ``__init__.py`` included.
    """
    root = Path(root)
    todo, seen = ["geogfm.cli", f"geogfm.stages.{stage}"], set()
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geogfm"):
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("geogfm")]
    return sorted(str(p.relative_to(root)) for p in seen)
