"""The memory-efficient (sequential-heads) MTP loss equals the naive all-heads loss, gradients included."""

import torch

from wmtp.model import IGNORE_INDEX, ModelArgs, Transformer, ValueHead, mtp_loss, mtp_loss_memory_efficient


def make_batch(vocab=53, batch=3, seq=12, heads=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = torch.full((batch, seq, heads), IGNORE_INDEX)
    for k in range(heads):
        labels[:, : seq - k - 1, k] = tokens[:, k + 1 :]
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels[0, 8:] = IGNORE_INDEX  # padding in one row
    weights = torch.rand((batch, seq, heads), generator=gen) * 2
    return tokens, labels, weights


def model_pair(seed=0):
    args = ModelArgs(
        dim=32, n_layers=6, n_heads=4, n_kv_heads=2, vocab_size=53, multiple_of=16, n_future_tokens=4, max_seq_len=32
    )
    torch.manual_seed(seed)
    a = Transformer(args)
    a.init_weights(seed)
    b = Transformer(args)
    b.load_state_dict(a.state_dict())
    return a, b


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_memory_efficient_loss_and_gradients_equal_naive():
    naive_model, efficient_model = model_pair()
    tokens, labels, weights = make_batch()
    head_weights = [0.4, 0.3, 0.2, 0.1]

    naive = mtp_loss(naive_model(tokens), labels, weights, head_weights)
    naive.total.backward()
    efficient = mtp_loss_memory_efficient(efficient_model, tokens, labels, weights, head_weights)

    torch.testing.assert_close(efficient.total, naive.total.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(efficient.per_head, naive.per_head, rtol=1e-6, atol=1e-6)
    naive_grads, efficient_grads = grads(naive_model), grads(efficient_model)
    for name in naive_grads:
        torch.testing.assert_close(efficient_grads[name], naive_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_extra_trunk_loss_and_loss_scale_match_naive():
    naive_model, efficient_model = model_pair(seed=1)
    value_a, value_b = ValueHead(32), ValueHead(32)
    value_b.load_state_dict(value_a.state_dict())
    tokens, labels, weights = make_batch(seed=1)

    def value_loss(head, model):
        return lambda h_trunk: head(model.norm(h_trunk)).square().mean()

    naive = mtp_loss(naive_model(tokens), labels, weights)
    (0.5 * (naive.total + value_loss(value_a, naive_model)(naive_model.forward_trunk(tokens)))).backward()
    efficient = mtp_loss_memory_efficient(
        efficient_model, tokens, labels, weights, extra_loss_fn=value_loss(value_b, efficient_model), loss_scale=0.5
    )
    assert efficient.extra is not None
    for (name, p_naive), p_eff in zip(naive_model.named_parameters(), efficient_model.parameters()):
        torch.testing.assert_close(p_eff.grad, p_naive.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(value_b.proj.weight.grad, value_a.proj.weight.grad, rtol=1e-5, atol=1e-7)


def test_ignored_labels_and_zero_weights_contribute_nothing():
    model, _ = model_pair()
    tokens, labels, weights = make_batch()
    base = mtp_loss(model(tokens), labels, weights).total
    weights_changed = weights.clone()
    weights_changed[labels == IGNORE_INDEX] = 1000.0  # weights on ignored positions are irrelevant
    torch.testing.assert_close(mtp_loss(model(tokens), labels, weights_changed).total, base)
    all_zero = mtp_loss(model(tokens), labels, torch.zeros_like(weights)).total
    assert all_zero.item() == 0.0


def test_uniform_weights_equal_plain_cross_entropy_of_head_one():
    model, _ = model_pair()
    tokens, labels, _ = make_batch()
    logits = model(tokens, n_heads=1)
    loss = mtp_loss(logits, labels[:, :, :1]).total
    expected = torch.nn.functional.cross_entropy(logits[:, :, 0].reshape(-1, 53), labels[:, :, 0].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_recomputed_loss_and_gradients_equal_naive():
    from wmtp.model.mtp_loss import mtp_loss_recomputed

    naive_model, recompute_model = model_pair(seed=2)
    tokens, labels, weights = make_batch(seed=2)
    naive = mtp_loss(naive_model(tokens), labels, weights)
    naive.total.backward()
    recomputed = mtp_loss_recomputed(recompute_model, recompute_model.forward_trunk(tokens), labels, weights)
    recomputed.total.backward()
    torch.testing.assert_close(recomputed.total.detach(), naive.total.detach())
    for (name, p_naive), p_rec in zip(naive_model.named_parameters(), recompute_model.parameters()):
        torch.testing.assert_close(p_rec.grad, p_naive.grad, rtol=1e-5, atol=1e-7, msg=name)
