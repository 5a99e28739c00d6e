"""The MTP transformer: Meta layout, shapes, causality, gradients, GQA, head selection."""

import pytest
import torch

from wmtp.model import ModelArgs, Transformer, ValueHead


def tiny_args(**overrides) -> ModelArgs:
    values = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                  n_future_tokens=3, max_seq_len=64)
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
    assert {"tok_embeddings.weight", "norm.weight", "output.weight",
            "layers.0.attention.wq.weight", "layers.2.feed_forward.w3.weight",
            "extra_heads.1.ffn_norm.weight"} <= names
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
