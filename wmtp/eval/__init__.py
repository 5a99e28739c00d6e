"""Evaluation: sandboxed execution, pass@k, HumanEval / MBPP, KV-cache and self-speculative generation.

Light to import: the sandbox and pass@k need no torch; the rest loads on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalError": "wmtp.eval.errors",
    "ExecutionResult": "wmtp.eval.sandbox",
    "Sandbox": "wmtp.eval.sandbox",
    "SandboxLimits": "wmtp.eval.sandbox",
    "run_program": "wmtp.eval.sandbox",
    "run_programs": "wmtp.eval.sandbox",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wmtp.eval' has no attribute {name!r}")
