"""What every process the gateway starts gets: its environment and its directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("coapdev.gateway.runner")


def base_environment(data_dir: Path) -> dict[str, str]:
    """What every process the gateway starts inherits: little of the gateway's own."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/"),
        "COAPDEV_DATA_DIR": str(data_dir),
    }


def prepare_data_dir(state_dir: Path) -> Path:
    """Where scripts run and keep their own files: never the directory of the keys."""
    path = Path(state_dir) / "data"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
