"""The app settings that point the project at a running simulator."""

from __future__ import annotations

from sandbox.itwin_platform import Simulator


def settings_for(simulator: Simulator) -> dict[str, str]:
    """The ITWIN_* settings (client id and secret, authority, API URL) for ``simulator``."""
    return {
        "ITWIN_CLIENT_ID": simulator.client_id,
        "ITWIN_CLIENT_SECRET": simulator.client_secret,
        "ITWIN_AUTHORITY": simulator.url,
        "ITWIN_API_URL": simulator.url,
    }
