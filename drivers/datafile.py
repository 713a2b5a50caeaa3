"""Reading the project's TOML data files (PLC contract, protocol addressing): the shipped
copy from the package, or an integrator's file, with errors that name the file."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any


def load_toml(path: str | Path | None, package: str, default: str,
              error: type[Exception]) -> tuple[dict[str, Any], str]:
    """(data, origin) of `path`, or of `default` shipped in `package` when path is None;
    an unreadable or malformed file raises `error` naming it."""
    if path is None:
        text = resources.files(package).joinpath(default).read_text()
        origin = default
    else:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise error(f"{origin}: cannot read: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(text), origin
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{origin}: not valid TOML: {exc}") from exc
