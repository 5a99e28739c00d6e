"""The MTP transformer: Meta layout, shapes, causality, gradients, GQA, head selection."""

import pytest
import torch

from wmtp.model import ModelArgs, Transformer, ValueHead


def tiny_args(**overrides) -> ModelArgs:
    values = dict(
        dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16, n_future_tokens=3, max_seq_len=64
    )
    return ModelArgs(**{**values, **overrides})


def tiny_model(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_args(**overrides))
    model.init_weights(seed)
    return model


def test_meta_layout_block_counts_and_names():
    model = tiny_model()
    assert len(model.layers) == 5 - 3 + 1
    assert len(model.extra_heads) == 2
    assert model.heads[0] is model.layers[-1]
    names = set(model.state_dict())
    assert {
        "tok_embeddings.weight",
        "norm.weight",
        "output.weight",
        "layers.0.attention.wq.weight",
        "layers.2.feed_forward.w3.weight",
        "extra_heads.1.ffn_norm.weight",
    } <= names
    assert not any("rope" in n for n in names), "RoPE tables are derived, never stored"
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()


def test_ffn_hidden_size_follows_meta_rule():
    assert ModelArgs(dim=64, multiple_of=32, ffn_dim_multiplier=1.3).ffn_hidden_dim == 224
    assert ModelArgs(dim=4096, multiple_of=256).ffn_hidden_dim == 11008  # LLaMA-7B


def test_logit_shapes_and_head_subsets():
    model = tiny_model()
    tokens = torch.randint(0, 97, (2, 11))
    logits = model(tokens)
    assert logits.shape == (2, 11, 3, 97) and logits.dtype == torch.float32
    first_two = model(tokens, n_heads=2)
    assert first_two.shape == (2, 11, 2, 97)
    torch.testing.assert_close(first_two, logits[:, :, :2])
    h_trunk = model.forward_trunk(tokens)
    assert h_trunk.shape == (2, 11, 64)
    torch.testing.assert_close(model.forward_head(h_trunk, 2), logits[:, :, 2])
    with pytest.raises(ValueError):
        model(tokens, n_heads=4)


def test_changing_a_later_token_never_changes_earlier_logits():
    model = tiny_model()
    tokens = torch.randint(0, 97, (1, 16))
    changed = tokens.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 97
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_gradients_reach_every_parameter():
    model = tiny_model()
    tokens = torch.randint(0, 97, (2, 8))
    value_head = ValueHead(64)
    logits = model(tokens)
    values = value_head(model.norm(model.forward_trunk(tokens)))
    (logits.square().mean() + values.square().mean()).backward()
    for name, param in [*model.named_parameters(), *value_head.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gqa_equals_multi_head_attention_with_repeated_kv_weights():
    gqa = tiny_model(n_kv_heads=2)
    mha = Transformer(tiny_args(n_kv_heads=4))
    state = gqa.state_dict()
    head_dim = 16
    for key, tensor in list(state.items()):
        if key.endswith(("attention.wk.weight", "attention.wv.weight")):
            per_head = tensor.view(2, head_dim, -1)
            state[key] = per_head.repeat_interleave(2, dim=0).reshape(4 * head_dim, -1)
    mha.load_state_dict(state)
    tokens = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(gqa(tokens), mha(tokens), rtol=1e-5, atol=1e-5)


def test_bf16_forward_and_backward_run():
    model = tiny_model().to(torch.bfloat16)
    logits = model(torch.randint(0, 97, (1, 6)))
    assert logits.dtype == torch.float32  # logits are upcast like Meta's `.float()`
    logits.mean().backward()
    assert model.output.weight.grad.dtype == torch.bfloat16


def test_value_head_is_unbounded_scalar_per_position():
    head = ValueHead(8)
    with torch.no_grad():
        head.proj.weight.fill_(10.0)
    values = head(torch.ones(2, 5, 8))
    assert values.shape == (2, 5) and values.max() > 1.0


def test_sequence_longer_than_max_seq_len_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model()(torch.zeros(1, 65, dtype=torch.long))


def test_invalid_params_are_named():
    from wmtp.errors import CheckpointError

    with pytest.raises(CheckpointError, match="n_kv_heads"):
        tiny_args(n_kv_heads=3)


# ---------------------------------------------------------------- decoding (KV cache) projections

# The same float32 dot products (length ≤ 384, terms of order 1) summed in another order differ by a few
# units in the last place of their largest partial sums: ≤ 1e-5 relative here, ≤ 1e-4 after six blocks
# and the output projection amplify it. A wrong weight, slice or transpose changes values by O(1).
ROUNDING = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13, 32])
def test_decoding_projections_agree_with_f_linear(rows, one_torch_thread):
    """Decoding fuses q/k/v and w1/w3 into one matmul each, multiplies stored-transposed weights from
    `GEMM_MIN_ROWS` rows on and normalises with `F.rms_norm` (CPU, float32): every output is the same
    dot products as the modules' own calls. On this project's machines the bits are equal; a BLAS on
    another CPU may sum a transposed or fused operand in another order, so the check allows float32
    rounding (`ROUNDING`), and a wrong slice, weight or transpose is off by orders of magnitude more."""
    import torch.nn.functional as F

    from wmtp.model.transformer import DecodingProjections, Projection, decoding_norm

    torch.manual_seed(0)
    model = tiny_model(dim=128, n_heads=4, n_kv_heads=2, multiple_of=64)  # FFN 384: w1/w3 fused
    block = model.layers[0]
    fast = DecodingProjections(block, fast=True)
    assert fast.wqkv is not None and fast.w13 is not None and fast.wo.weight_t is not None
    x = torch.randn(rows, 1, 128) * 3
    with torch.no_grad():
        for module in (block.attention.wq, block.attention.wo, block.feed_forward.w2, model.output):
            w = module.weight
            xin = torch.randn(rows, w.shape[1])
            torch.testing.assert_close(Projection(w, transposed=True)(xin), F.linear(xin, w), **ROUNDING)
        a = block.attention
        qk, v = fast.qkv(x)
        expected_qk = torch.cat((a.wq(x).view(rows, 1, 4, 32), a.wk(x).view(rows, 1, 2, 32)), dim=2)
        torch.testing.assert_close(qk, expected_qk, **ROUNDING)
        torch.testing.assert_close(v, a.wv(x).view(rows, 1, 2, 32), **ROUNDING)
        torch.testing.assert_close(fast.feed_forward(x), block.feed_forward(x), **ROUNDING)
        torch.testing.assert_close(decoding_norm(block.ffn_norm, True)(x), block.ffn_norm(x), **ROUNDING)


@pytest.mark.parametrize("batch", [1, 3])
def test_cached_steps_with_fused_projections_equal_the_modules(batch, monkeypatch, one_torch_thread):
    """A prompt pass and greedy / speculative-shaped steps (1 and 4 tokens a row, rows at different
    positions) give the same logits through the fast decoding projections as through the modules (up to
    float32 rounding: see `test_decoding_projections_agree_with_f_linear`)."""
    from functools import partial

    from wmtp.eval.decoding import CachedMTP
    from wmtp.model import transformer

    model = tiny_model(dim=128, n_heads=4, n_kv_heads=2, multiple_of=64, n_layers=6, max_seq_len=128).eval()
    tokens = torch.randint(0, 97, (batch, 40), generator=torch.Generator().manual_seed(1))
    lengths = [20 + 3 * b for b in range(batch)]

    def run():
        cached = CachedMTP(model, batch, 64, n_heads=3)
        out = [cached.step(tokens[:, :26], [0] * batch, 3).full()]
        for start, n in ((0, 1), (1, 4), (5, 1), (6, 4)):
            steps = torch.stack([tokens[b, lengths[b] + start : lengths[b] + start + n] for b in range(batch)])
            out.append(cached.step(steps, [length + start for length in lengths], 3).full())
        return out

    fast = run()
    monkeypatch.setattr(transformer, "decoding_projections", partial(transformer.decoding_projections, fast=False))
    plain = run()
    for got, expected in zip(fast, plain):
        torch.testing.assert_close(got, expected, **ROUNDING)
