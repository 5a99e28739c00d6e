"""Token-weight math (docs/architecture.md) on hand-computed examples."""

import math

import pytest
import torch

from wmtp.weighting import rho1, td
from wmtp.weighting.stats import weight_stats


def example():
    # 2 rows, 6 positions; prompt = positions 0–1, response = 2..4 (row 0) and 2..5 (row 1).
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 9.0], [0.0, 0.5, 0.25, 0.5, 0.75, 1.0]])
    rewards = torch.tensor([1.0, 0.0])
    return mask, values, rewards


def test_td_errors_follow_the_design_formula():
    mask, values, rewards = example()
    gamma = 0.9
    deltas = td.td_errors(values, mask, rewards, gamma)
    # row 0: j=2,3 → γV_j − V_{j−1}; j=T=4 → R − V_3
    expected0 = [0, 0, gamma * 0.3 - 0.2, gamma * 0.4 - 0.3, 1.0 - 0.4, 0]
    expected1 = [0, 0, gamma * 0.25 - 0.5, gamma * 0.5 - 0.25, gamma * 0.75 - 0.5, 0.0 - 0.75]
    torch.testing.assert_close(deltas, torch.tensor([expected0, expected1]))


def test_td_weights_are_clipped_exponentials():
    mask, values, rewards = example()
    deltas = td.td_errors(values, mask, rewards, 1.0)
    weights = td.td_weights(deltas, mask, beta=0.5, w_min=0.5, w_max=1.5)
    assert weights[0, 4] == 1.5  # exp(0.6/0.5) = 3.32 → clipped
    torch.testing.assert_close(weights[0, 3], torch.tensor(math.exp((0.4 - 0.3) / 0.5)))
    assert weights[1, 5] == 0.5  # exp(−0.75/0.5) = 0.22 → clipped
    assert (weights[~mask] == 1).all()


def test_returns_discount_from_the_end_and_value_loss_masks():
    mask, values, rewards = example()
    returns = td.value_returns(mask, rewards, gamma=0.5)
    torch.testing.assert_close(returns[0], torch.tensor([0, 0, 0.25, 0.5, 1.0, 0]))
    assert returns[1].abs().sum() == 0
    loss = td.value_loss(values, returns, mask)
    expected = ((values - returns)[mask] ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_anchor_clipping_takes_the_pessimistic_loss():
    mask = torch.ones(1, 1, dtype=torch.bool)
    returns, anchor = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    values = torch.tensor([[0.9]], requires_grad=True)
    loss = td.value_loss(values, returns, mask, anchor_values_BS=anchor, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor((0.2 - 1.0) ** 2))  # clipped prediction is worse
    loss.backward()
    assert values.grad.item() == 0.0  # outside the clip range the head gets no gradient


def test_explained_variance_is_one_for_perfect_predictions():
    mask, _, rewards = example()
    returns = td.value_returns(mask, rewards, 1.0)
    assert td.explained_variance(returns, returns, mask) == 1.0


def test_explained_variance_pools_batches_whose_own_returns_are_constant():
    # Two batches of one sequence each (γ = 1): each batch's returns are constant, so a per-batch
    # explained variance is nan; summed statistics give the explained variance of both together.
    mask, values, rewards = example()
    returns = td.value_returns(mask, rewards, 1.0)
    rows = [slice(0, 1), slice(1, 2)]
    assert all(math.isnan(td.explained_variance(values[r], returns[r], mask[r])) for r in rows)
    sums = [td.explained_variance_sums(values[r], returns[r], mask[r]) for r in rows]
    pooled = td.explained_variance_from_sums({k: sums[0][k] + sums[1][k] for k in td.EV_SUM_KEYS})
    assert pooled == pytest.approx(td.explained_variance(values, returns, mask), rel=1e-6)
    assert math.isnan(td.explained_variance_from_sums(sums[0]))


def test_tokenskip_keeps_exactly_kept_count_tokens_even_with_ties():
    excess = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    valid = torch.ones_like(excess, dtype=torch.bool)
    for ratio in (0.2, 0.5, 0.6, 1.0):
        assert int(rho1.tokenskip_mask(excess, valid, ratio).sum()) == rho1.kept_count(5, ratio)
    assert rho1.kept_count(0, 0.6) == 0 and rho1.kept_count(1, 0.1) == 1


def test_tokenskip_keeps_the_top_fraction_of_valid_tokens():
    excess = torch.tensor([[5.0, 1.0, 3.0, 2.0, 100.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    keep = rho1.tokenskip_mask(excess, valid, keep_ratio=0.5)
    assert keep.tolist() == [[True, False, True, False, False]]


def test_soft_weights_have_mean_one_and_order_by_excess():
    excess = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    valid = torch.ones_like(excess, dtype=torch.bool)
    weights = rho1.soft_weights(excess, valid, temperature=10.0, w_min=0.0, w_max=10.0)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    assert torch.all(weights[0, 1:] > weights[0, :-1])


def test_weight_stats_report_clipping_and_entropy():
    weights = torch.tensor([[0.1, 1.0, 5.0, 1.0]])
    stats = weight_stats(weights, torch.ones_like(weights, dtype=torch.bool), 0.1, 5.0)
    assert stats["weight/frac_clipped"] == 0.5
    assert 0 < stats["weight/entropy"] < 1
    uniform = weight_stats(torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool), 0.1, 5.0)
    assert abs(uniform["weight/entropy"] - 1.0) < 1e-6
