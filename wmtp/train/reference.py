"""Reference language models for Rho-1: our own model class, or a Hugging Face causal LM (extra `hf`)."""

from __future__ import annotations

import torch
from torch import nn

from wmtp.errors import WmtpError


class HFCausalLM(nn.Module):
    """Wrap a transformers causal LM so `forward(tokens)` returns logits `[B, S, V]`."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=tokens_BS).logits.float()


def load_reference_model(reference: str, device) -> nn.Module:
    """`hf:<name or path>` → transformers AutoModelForCausalLM (local files only); else our model dir."""
    if reference.startswith("hf:"):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise WmtpError("rho1.reference: hf: references need the `hf` extra (pip install 'weighted-mtp[hf]')") from None
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(reference[3:], local_files_only=True)
        except OSError as exc:
            raise WmtpError(f"rho1.reference: cannot load {reference[3:]!r} ({exc})") from None
        return HFCausalLM(hf_model).to(device)
    from wmtp.model import load_model

    return load_model(reference, device=device, dtype="float32")
