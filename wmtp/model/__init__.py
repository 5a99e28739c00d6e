"""Model: MTP transformer (Meta layout), value head, MTP loss, checkpoints, tokenizer, micro builder."""

from wmtp.model.args import ModelArgs
from wmtp.model.checkpoint import convert_meta, load_model, save_model, verify_model_dir
from wmtp.model.mtp_loss import IGNORE_INDEX, MTPLoss, mtp_loss, mtp_loss_memory_efficient
from wmtp.model.tokenizer import Tokenizer, load_tokenizer
from wmtp.model.transformer import Transformer, ValueHead

__all__ = [
    "IGNORE_INDEX",
    "ModelArgs",
    "MTPLoss",
    "Tokenizer",
    "Transformer",
    "ValueHead",
    "convert_meta",
    "load_model",
    "load_tokenizer",
    "mtp_loss",
    "mtp_loss_memory_efficient",
    "save_model",
    "verify_model_dir",
]
