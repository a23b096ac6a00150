"""aigateway: an authenticating, metering gateway in front of Ollama."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Settings", "__version__", "create_app"]

if TYPE_CHECKING:
    from .app import create_app
    from .settings import Settings


def __getattr__(name: str) -> object:
    # Imported on first use, so `import aigateway.cli...` neither pays for aiohttp nor
    # needs it installed yet (the CLI shims check that before anything else).
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'aigateway' has no attribute {name!r}")
