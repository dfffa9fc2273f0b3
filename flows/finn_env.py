"""FINN settings for a Vivado-free flow.

FINN (finn-plus 1.6.1) keeps global settings, among them the folder where every node's generated
code lands (``FINN_BUILD_DIR``). Its builder cannot be imported without Vivado, so this project
initializes the settings itself and points the build folder at the run's own ``build/`` tree:
generated HDL then lives with the run, never in the home directory or ``/tmp``. Nothing here runs
at import time.
"""

from __future__ import annotations

import os
from pathlib import Path


def init_finn(finn_build_dir: Path) -> Path:
    """Point FINN's build folder at ``finn_build_dir`` and (re)initialize its global settings.

    Returns the absolute build folder. Safe to call again with another folder (each run has its
    own); the previous settings object is replaced.
    """
    from finn.interface.settings import FINNSettings
    from finn.util import settings

    build_dir = Path(finn_build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ["FINN_BUILD_DIR"] = str(build_dir)
    settings.initialize_dummy_settings()
    settings._SETTINGS = FINNSettings.init(
        flow_config=build_dir / "dummy.yaml",
        finn_build_dir=str(build_dir),
        auto_set_environment_vars=False,
    )
    return build_dir


def finn_rtllib_dir() -> Path:
    """The ``finn-rtllib`` folder of the installed FINN (read-only: copy before patching)."""
    from finn.util.settings import get_settings

    return Path(get_settings().finn_rtllib)
