import math

import pytest
import torch

from sdt_gen.layers import (
    ContextAwareGate,
    decay_bias,
    decay_map,
    fixed_rates,
    grid_coordinates,
    manhattan_distance,
    rmt_gammas,
)


def test_rmt_gammas_match_method_table():
    expected = [0.75, 0.875, 0.9375, 0.96875, 0.984375, 0.9921875]
    torch.testing.assert_close(rmt_gammas(6, 2.0, 6.0), torch.tensor(expected))


def test_manhattan_distance_on_3x4_grid_by_hand():
    dist = manhattan_distance(3, 4)
    rows, cols = grid_coordinates(3, 4)
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert cols.tolist() == [0, 1, 2, 3] * 3
    assert dist[0, 11] == 5  # (0,0) -> (2,3)
    assert dist[1, 6] == 2  # (0,1) -> (1,2)
    assert dist[5, 5] == 0
    assert manhattan_distance(3, 4) is dist, "distances must be cached per grid size"


def test_fixed_bias_is_distance_times_log_gamma():
    gammas = rmt_gammas(2, 2.0, 4.0)  # 0.75, 0.9375
    bias = decay_bias(fixed_rates(gammas), manhattan_distance(3, 4))
    assert bias.shape == (1, 2, 12, 12)
    assert bias[0, 0, 0, 11].item() == pytest.approx(5 * math.log(0.75), rel=1e-6)
    assert bias[0, 1, 1, 6].item() == pytest.approx(2 * math.log(0.9375), rel=1e-6)
    assert bias[0, 0, 4, 4].item() == 0


def test_cag_with_rmt_init_equals_fixed_and_zero_init_equals_none():
    gammas = rmt_gammas(3, initial_value=1.5, heads_range=4.0)
    x = torch.randn(2, 12, 16)
    dist = manhattan_distance(3, 4)
    rmt_gate = ContextAwareGate(16, 3, "rmt", initial_value=1.5, heads_range=4.0)
    torch.testing.assert_close(
        decay_bias(rmt_gate(x), dist), decay_bias(fixed_rates(gammas), dist).expand(2, -1, -1, -1)
    )
    zero_gate = ContextAwareGate(16, 3, "zero")
    assert torch.count_nonzero(decay_bias(zero_gate(x), dist)) == 0


def test_cag_bias_is_nonpositive_symmetric_and_data_dependent():
    gate = ContextAwareGate(16, 4, "rmt")
    with torch.no_grad():
        gate.proj.weight.normal_()
        gate.alpha.uniform_(0.5, 2.0)
    x = torch.randn(2, 12, 16)
    bias = decay_bias(gate(x), manhattan_distance(3, 4))
    assert (bias <= 0).all()
    torch.testing.assert_close(bias, bias.transpose(-1, -2))
    # By hand: -|alpha * 0.5 * (g_n + g_m) * d|.
    g = torch.nn.functional.logsigmoid(gate.proj(x)).transpose(1, 2)
    n, m, head = 2, 9, 1
    expected = -abs(gate.alpha[head] * 0.5 * (g[0, head, n] + g[0, head, m]) * manhattan_distance(3, 4)[n, m])
    assert bias[0, head, n, m].item() == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.allclose(bias[0], bias[1]), "the bias must depend on the tokens"


def test_negative_alpha_is_clamped_to_keep_bias_nonpositive():
    gate = ContextAwareGate(8, 2, "rmt")
    with torch.no_grad():
        gate.alpha.fill_(-1.0)
    assert torch.count_nonzero(gate(torch.randn(1, 4, 8))) == 0


def test_decay_map_is_one_at_query_and_matches_bias_row():
    gammas = rmt_gammas(2)
    maps = decay_map(fixed_rates(gammas), (3, 4), query=5)
    assert maps.shape == (1, 2, 3, 4)
    assert maps[0, :, 1, 1].tolist() == [1.0, 1.0]
    bias = decay_bias(fixed_rates(gammas), manhattan_distance(3, 4))
    torch.testing.assert_close(maps.flatten(2), bias[:, :, 5].exp())
    with pytest.raises(ValueError, match="outside the 3x4 grid"):
        decay_map(fixed_rates(gammas), (3, 4), query=12)


def test_unknown_decay_init_lists_choices():
    with pytest.raises(ValueError, match="unknown decay_init 'ones'.*'rmt', 'zero'"):
        ContextAwareGate(8, 2, "ones")
