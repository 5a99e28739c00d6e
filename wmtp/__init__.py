"""weighted-mtp trainer: the model, data, weighting, training loop and evaluation.

Runs inside the container (under torchrun); holds no CLI or templating code.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def enable_mps_fallback(platform: str = _sys.platform, environ=_os.environ) -> None:
    """On macOS, let ops MPS lacks run on the CPU instead of raising (PYTORCH_ENABLE_MPS_FALLBACK=1).

    torch reads the variable once, when it loads, so it is set here: the `wmtp` CLI and
    `python -m wmtp.train` import this package before torch. A value already set (e.g. 0) is kept."""
    if platform == "darwin":
        environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


enable_mps_fallback()
