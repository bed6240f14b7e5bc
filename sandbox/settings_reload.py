"""Reloads settings from a ``local.settings.json`` while the app runs, as a restart would load them.

App Service restarts the app when its configuration changes, and the restarted app reads the new values.
``make dev`` cannot restart its host without dropping what is in flight, so it watches the file instead and puts
the changed values of the named settings (the webhook secrets) into the environment, which the webhook function
reads on every request. Other settings are read once per process and still need a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

from ops.errors import OpsError
from ops.local_settings import LocalSettingsFile

log = logging.getLogger(__name__)


class SettingsReloader:
    """Polls ``path`` every `interval` seconds; a context manager."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: Sequence[str],
        environ: MutableMapping[str, str] | None = None,
        *,
        interval: float = 0.2,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.file = LocalSettingsFile(path)
        self.names = tuple(names)
        self.environ = os.environ if environ is None else environ
        self.interval = interval
        self.on_change = on_change
        self._stamp = self._stat()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="settings-reload", daemon=True)

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = Path(self.file.path).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def reload(self) -> list[str]:
        """Apply the file's values of the watched settings now; returns the names that changed."""
        try:
            values = self.file.values()
        except OpsError as error:
            log.warning("%s not reloaded: %s", self.file.path, error)
            return []
        changed = []
        for name in self.names:
            value = values.get(name, "").strip()
            if value == self.environ.get(name, "").strip():
                continue
            if value:
                self.environ[name] = value
            else:
                self.environ.pop(name, None)
            changed.append(name)
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            stamp = self._stat()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            changed = self.reload()
            if changed:
                log.info("%s changed: reloaded %s", self.file.path, ", ".join(changed))
                if self.on_change:
                    self.on_change(changed)

    def __enter__(self) -> SettingsReloader:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
