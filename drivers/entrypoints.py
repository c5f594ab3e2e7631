"""Other packages' entry points (`vpp_agent.maps`, `vpp_agent.drivers`): found lazily, loaded with one error format.

Finding them scans the installed distributions' metadata on sys.path (a few ms), so nothing here runs at import:
a group is read the first time a lookup needs it, once per process. Loading one imports the plugin's module; a
plugin that fails to import is a PluginError naming the distribution, the entry point and the exception, which
`vpp-agent check-config` reports like any other config problem (docs/integrators.md, "Plugins").

This module lives in `drivers` because the map lookup (drivers/registermap.py) needs it and `drivers` imports
nothing of `agent` but the domain and the ports; the driver registry (agent/plugins.py) uses it too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

BUILT_IN = "vpp-agent (built in)"


class PluginError(ValueError):
    """A plugin that cannot be loaded, gives something unusable, or clashes with another source; names the plugin."""


@dataclass(frozen=True)
class Plugin:
    """One entry point of a group: `name = "module:attribute"` from distribution `source`."""

    group: str
    name: str
    value: str
    source: str  # "<distribution> <version>", or BUILT_IN for the agent's own

    def describe(self) -> str:
        """How an error names this plugin: where it comes from and the line of entry_points.txt that declares it."""
        if self.source == BUILT_IN:
            return f"{BUILT_IN} ({self.value})"
        return f"plugin {self.source} ([{self.group}] {self.name} = {self.value!r})"

    def load(self) -> Any:
        """Import the module and return the attribute; any exception the import raises becomes a PluginError."""
        try:
            return metadata.EntryPoint(self.name, self.value, self.group).load()
        except Exception as exc:  # a plugin's import can raise anything; it must not crash the agent unnamed
            raise PluginError(f"{self.describe()} failed to load: {type(exc).__name__}: {exc}") from exc


@functools.cache
def installed(group: str) -> tuple[Plugin, ...]:
    """The entry points of `group` in the installed distributions (read once per process, nothing imported).

    A distribution found twice on sys.path (an editable install beside a copy) is listed once."""
    found: dict[tuple[str, str], Plugin] = {}
    for entry in metadata.entry_points(group=group):
        dist = entry.dist
        source = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
        found.setdefault((entry.name, entry.value), Plugin(group, entry.name, entry.value, source))
    return tuple(sorted(found.values(), key=lambda p: (p.name, p.source)))


MAPS_GROUP = "vpp_agent.maps"


@functools.cache
def map_directories() -> tuple[tuple[Plugin, Path], ...]:
    """Each `vpp_agent.maps` plugin and its directory of map files, loaded once per process.

    The entry point's value may name a package or module (its directory holds the maps), a str or Path attribute
    (the directory), or a callable returning one; anything else, or a directory that does not exist, is a
    PluginError. A failed load is not cached: the next lookup reports it again."""
    found = []
    for plugin in installed(MAPS_GROUP):
        value = plugin.load()
        if isinstance(value, ModuleType):  # a package (its folder, a namespace package's first) or a module's folder
            folders = list(getattr(value, "__path__", []))
            value = folders[0] if folders else Path(value.__file__ or "").parent
        elif callable(value):
            try:
                value = value()
            except Exception as exc:  # the plugin's code: name it whatever it raises
                raise PluginError(f"{plugin.describe()}: calling it failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(value, str | PathLike):
            raise PluginError(f"{plugin.describe()}: gave {type(value).__name__}, not a directory of map files")
        folder = Path(str(value))
        if not folder.is_dir():
            raise PluginError(f"{plugin.describe()}: {folder} is not a directory")
        found.append((plugin, folder))
    return tuple(found)
