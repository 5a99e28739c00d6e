"""The throughput options, decided without a GPU: FSDP2 mixed precision picked by `model.dtype: auto` on
CUDA (instead of autocast), the activation-checkpointing modes, per-block compilation's wrapping and
fused AdamW on CUDA. The multi-process and compiled runs are in tests/integration/test_train_throughput.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from wmtp.device import Precision, precision
from wmtp.distributed import DistContext, fsdp_mixed_precision, parallelize, selective_save_ops
from wmtp.model import ModelArgs, Transformer
from wmtp.train.config import SpecError, load_experiment
from wmtp.train.loop import build_optimizer
from wmtp.train.objectives import TrainModule

BF16, FP32 = torch.bfloat16, torch.float32


def test_auto_on_cuda_under_fsdp_is_fsdp2_mixed_precision_instead_of_autocast():
    assert precision("auto", "cuda", fsdp=True) == Precision(FP32, autocast=None, fsdp_param_dtype=BF16)
    assert precision("auto", "cuda") == Precision(FP32, autocast=BF16)  # DDP and one process keep autocast
    for device in ("cpu", "mps"):  # fp32 there, sharded or not
        assert precision("auto", device, fsdp=True) == Precision(FP32)
    # An explicit dtype means what it says under FSDP too.
    assert precision("float32", "cuda", fsdp=True) == Precision(FP32)
    assert precision("bfloat16", "cuda", fsdp=True) == Precision(BF16)


def test_the_fsdp2_policy_computes_in_bf16_and_reduces_in_fp32_without_casting_inputs():
    assert fsdp_mixed_precision(None) is None
    policy = fsdp_mixed_precision(BF16)
    # Inputs stay as they are: the RoPE tables and the batch's token weights / normalisers are fp32.
    assert (policy.param_dtype, policy.reduce_dtype, policy.cast_forward_inputs) == (BF16, FP32, False)


def test_activation_checkpointing_is_none_full_or_selective_and_the_old_booleans_still_load():
    def mode(*overrides):
        return load_experiment("smoke", list(overrides)).stages[0].distributed.activation_checkpointing

    assert mode() == "none"  # smoke.yaml says false
    assert load_experiment("baseline").stages[0].distributed.activation_checkpointing == "full"  # defaults: true
    assert mode("distributed.activation_checkpointing=true") == "full"
    assert mode("distributed.activation_checkpointing=selective") == "selective"
    assert mode("distributed.activation_checkpointing=none") == "none"
    with pytest.raises(
        SpecError,
        match=r"distributed\.activation_checkpointing: Input should be 'none', 'full' or "
        r"'selective' \(got 'op'\)",
    ):
        mode("distributed.activation_checkpointing=op")
    assert load_experiment("smoke").stages[0].train.compile is False
    assert load_experiment("smoke", ["train.compile=true"]).stages[0].train.compile is True


def tiny_module() -> TrainModule:
    torch.manual_seed(0)
    model = Transformer(
        ModelArgs(
            dim=64,
            n_layers=5,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=97,
            multiple_of=16,
            n_future_tokens=3,
            max_seq_len=64,
        )
    )
    model.init_weights(0)
    return TrainModule(model)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


def loss_grads_and_backward_ops(ac_mode: str):
    module = tiny_module()
    parallelize(module, "none", DistContext(), ac_mode)
    tokens = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    logits = module.model(tokens)  # [B, S, H, V]
    loss = F.cross_entropy(logits[:, :-3].flatten(0, 2), tokens[:, 1:].unfold(1, 3, 1).flatten())
    with CountOps() as backward:
        loss.backward()
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad for name, p in module.named_parameters()}
    assert list(grads) == list(module.state_dict())  # the wrapper's prefix never reaches a checkpoint
    return loss.detach(), grads, backward.counts


def test_activation_checkpointing_modes_recompute_what_they_say_and_give_the_same_gradients():
    """5 blocks (2 trunk, 3 heads) of 7 matmuls in this order: wq wk wv wo w1 w3 w2. Full AC recomputes
    each block in backward up to the last tensor backward needs: the first 6 matmuls (w2's output is
    not needed) and the attention, 30 matmuls in all; selective keeps the attention and the odd-numbered
    matmuls and recomputes wk, wo and w3: 15; none recomputes nothing. Recomputation repeats the same
    float operations, so the gradients are bit-identical."""
    mm = torch.ops.aten.mm.default
    loss, grads, ops = loss_grads_and_backward_ops("none")
    extra_mm = {}
    for mode in ("full", "selective"):
        mode_loss, mode_grads, mode_ops = loss_grads_and_backward_ops(mode)
        assert torch.equal(mode_loss, loss)
        assert mode_grads.keys() == grads.keys()
        for name in grads:
            assert torch.equal(mode_grads[name], grads[name]), f"{mode}: {name}"
        extra_mm[mode] = mode_ops.get(mm, 0) - ops.get(mm, 0)
        attention = {op: n for op, n in mode_ops.items() if op in selective_save_ops() and op != mm}
        recomputed_attention = sum(attention.values()) - sum(ops.get(op, 0) for op in attention)
        assert recomputed_attention == (5 if mode == "full" else 0), (mode, attention)
    assert extra_mm == {"full": 30, "selective": 15}


def test_compiled_blocks_keep_their_names_and_module_calls():
    """Only each block's forward is compiled: the module call (where FSDP2 hangs its all-gather and
    reshard hooks) stays eager, and names / state-dict keys are Meta's (no `_orig_mod`)."""
    module = tiny_module()
    keys = list(module.state_dict())
    parallelize(module, "none", DistContext(), "full", compile=True)
    assert list(module.state_dict()) == keys
    blocks = [*module.model.layers, *module.model.extra_heads]
    assert all("forward" in vars(block) for block in blocks)  # a compiled forward on each block (the AC wrapper)
    assert "forward" not in vars(module.model) and "forward" not in vars(module)


def test_adamw_is_fused_on_cuda_and_the_per_tensor_loop_elsewhere():
    train = load_experiment("smoke").stages[0].train
    params = [torch.nn.Parameter(torch.zeros(3))]
    cuda = build_optimizer(params, train, torch.device("cuda"))  # CPU tensors: fused AdamW runs on CPU too
    assert cuda.defaults["fused"] is True and not cuda.defaults["foreach"]
    cpu = build_optimizer(params, train, torch.device("cpu"))
    assert not cpu.defaults["fused"] and cpu.defaults["foreach"] is False
