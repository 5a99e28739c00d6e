"""Model: MTP transformer (Meta layout), value head, MTP loss, checkpoints, tokenizer, micro builder.

Light to import: exports load on first use (PEP 562), so `wmtp.model.args` or `load_tokenizer`
(sentencepiece only) do not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "IGNORE_INDEX": "wmtp.model.mtp_loss",
    "ModelArgs": "wmtp.model.args",
    "MTPLoss": "wmtp.model.mtp_loss",
    "Tokenizer": "wmtp.model.tokenizer",
    "Transformer": "wmtp.model.transformer",
    "ValueHead": "wmtp.model.transformer",
    "convert_meta": "wmtp.model.checkpoint",
    "load_model": "wmtp.model.checkpoint",
    "load_tokenizer": "wmtp.model.tokenizer",
    "mtp_loss": "wmtp.model.mtp_loss",
    "mtp_loss_memory_efficient": "wmtp.model.mtp_loss",
    "save_model": "wmtp.model.checkpoint",
    "verify_model_dir": "wmtp.model.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wmtp.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """`wmtp.model.mtp_loss` is the function, as with the former eager imports, even after the submodule
    of that name was imported (the import system then binds the submodule on its parent package)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "mtp_loss" and isinstance(value, types.ModuleType):
            value = value.mtp_loss
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
