"""The packaged default config: the demo site (4 V2G chargers, 2 batteries, 2 meters and its `[simulation]`).

One copy, shipped inside the package so `vpp-agent demo` works from any directory of any install; the repository's
`config.toml` is a symlink to it, so the README's `--config config.toml` and the tests read the same file.
`vpp-agent init` writes it out for a user to edit.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

NAME = "config.toml"


def config_path() -> Path:
    """Where the packaged config is on this install (a file in the source tree for an editable install)."""
    return Path(str(resources.files(__name__) / NAME))


def config_text() -> str:
    return (resources.files(__name__) / NAME).read_text(encoding="utf-8")
