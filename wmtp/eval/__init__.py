"""Evaluation: HumanEval / MBPP, KV-cache and self-speculative generation, execution in the sandbox
(`wmtp.sandbox`), pass@k, policy vs reference loss. Light to import: torch loads on first use."""
