"""aigateway: an authenticating, metering gateway in front of Ollama."""

from __future__ import annotations

__version__ = "0.1.0"

# Imported after __version__, which the modules below read.
from .app import create_app
from .settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
