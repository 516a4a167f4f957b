"""YAML loading that remembers the line of every node, for error messages.

A plan error must say where it is: ``groups[1].accounts.password (line 14)``.
PyYAML's composer keeps a ``start_mark`` on every node, but its constructor
throws them away; :func:`load_with_lines` walks the node tree itself and
returns the plain data plus a map from data path to 1-based line.

Call :func:`line_of` with a path (keys and list indexes) to get the line of
that node or, if it does not exist (a missing field), of its nearest parent.
"""

from __future__ import annotations

from typing import Any

import yaml

from sipswarm.errors import ConfigError

Path = tuple[str | int, ...]


class _Builder:
    """Turn a composed node tree into Python data, recording each node's line."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[Path, int] = {}

    def build(self, node: yaml.Node, path: Path, line: int) -> Any:
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                # Keys are names: YAML 1.1 would read `on:` as True, keep the text instead.
                if isinstance(key_node, yaml.ScalarNode):
                    key: Any = key_node.value
                else:
                    key = None
                if not isinstance(key, str):
                    raise ConfigError(
                        f"{format_path(path)} (line {key_node.start_mark.line + 1}): "
                        "mapping keys must be plain scalars"
                    )
                child = (*path, key)
                out[key] = self.build(value_node, child, key_node.start_mark.line + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, (*path, i), item.start_mark.line + 1)
                for i, item in enumerate(node.value)
            ]
        return self.loader.construct_object(node, deep=True)


def load_with_lines(text: str, source: str = "<plan>") -> tuple[Any, dict[Path, int]]:
    """Parse YAML (JSON is YAML too); return ``(data, {path: line})``.

    Raises :class:`ConfigError` naming the line on a syntax error.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _Builder(loader)
        data = builder.build(node, (), node.start_mark.line + 1)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}{where}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return data, builder.lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path`` or of its nearest existing parent; None if unknown."""
    for cut in range(len(path), -1, -1):
        line = lines.get(path[:cut])
        if line is not None:
            return line
    return None


def format_path(path: Path) -> str:
    """``("groups", 1, "accounts")`` -> ``groups[1].accounts`` (``<root>`` if empty)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"
