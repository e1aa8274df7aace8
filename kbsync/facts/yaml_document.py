"""The document read from a YAML file: its data plus the node (and so the file:line)
behind every mapping key and value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from kbsync.facts.source import Location

_Path = tuple[str, ...]


@dataclass
class YamlDocument:
    """Constructed data plus the node behind every mapping key and value."""

    file: str
    data: Any
    values: dict[_Path, yaml.Node] = field(default_factory=dict)
    keys: dict[_Path, yaml.Node] = field(default_factory=dict)

    def node(self, path: Iterable[Any]) -> yaml.Node | None:
        """The node at `path`, or at its longest known prefix."""
        parts = tuple(str(p) for p in path)
        for end in range(len(parts), -1, -1):
            if parts[:end] in self.values:
                return self.values[parts[:end]]
        return None

    def location(self, path: Iterable[Any], *, key: bool = False) -> Location:
        parts = tuple(str(p) for p in path)
        node = self.keys.get(parts) if key else None
        node = node or self.node(parts)
        if node is None:
            return Location(self.file)
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)
