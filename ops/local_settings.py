"""``local.settings.json``: the ``Values`` the Functions host and ``make dev`` read, and what the tool writes back.

Values are read into the environment without overriding what is already set there, as ``func start`` does.
Writes replace the file atomically (a reader never sees half a file) and keep every other entry as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ops.errors import UsageError


class LocalSettingsFile:
    """One ``local.settings.json``; a missing file reads as empty and is created on the first write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _document(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"IsEncrypted": False, "Values": {}}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.path} cannot be read as JSON ({exc}); fix or remove it") from None
        if not isinstance(document, dict) or not isinstance(document.get("Values", {}), dict):
            raise UsageError(f'{self.path} must be an object with a "Values" object, like local.settings.example.json')
        if document.get("IsEncrypted"):
            raise UsageError(
                f"{self.path} is encrypted (func settings encrypt): decrypt it first (func settings decrypt)"
            )
        return document

    def values(self) -> dict[str, str]:
        """The ``Values``, as strings (null becomes empty)."""
        return {name: "" if value is None else str(value) for name, value in self._document().get("Values", {}).items()}

    def load_into(self, environ: MutableMapping[str, str]) -> list[str]:
        """Put the values into ``environ`` where it has none; returns the names it set."""
        loaded = []
        for name, value in self.values().items():
            if name not in environ:
                environ[name] = value
                loaded.append(name)
        return loaded

    def update(self, changes: Mapping[str, str | None]) -> None:
        """Set each value (None removes it) and write the file in one atomic step."""
        document = self._document()
        values = document.setdefault("Values", {})
        for name, value in changes.items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".local.settings.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
            if self.path.exists():
                os.chmod(temporary, self.path.stat().st_mode & 0o777)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
