"""Properties of the WTA step, task generation and unit naming."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.naming import decode, name_units  # noqa: E402
from training.tasks import make_tasks, one_hot  # noqa: E402
from training.worlds import Factor  # noqa: E402
from training.wta import pad_groups, winner_take_all  # noqa: E402


def test_one_winner_per_group():
    logits, mask = pad_groups(torch.randn(32, 2 + 5 + 3), [2, 5, 3])
    out = winner_take_all(logits, mask, mode="hard")
    assert out.code.shape == (32, 3, 5)
    assert torch.equal(out.code.sum(dim=-1), torch.ones(32, 3))
    assert (out.code[:, ~mask] == 0).all()
    assert (out.winners[:, 0] < 2).all()
    assert (out.winners[:, 2] < 3).all()


def test_ties_go_to_lowest_index():
    logits = torch.tensor([[[1.0, 3.0, 3.0, 0.0]], [[2.0, 2.0, 2.0, 2.0]]])
    out = winner_take_all(logits, mode="hard")
    assert out.winners.tolist() == [[1], [0]]


def test_non_finite_logits_pick_a_real_unit():
    logits, mask = pad_groups(torch.tensor([[float("nan"), float("nan"), 1.0, float("inf"), float("-inf")]]), [2, 3])
    out = winner_take_all(logits, mask, mode="hard")
    assert out.winners.tolist() == [[0, 1]]
    assert torch.isfinite(out.probs[:, mask]).all()


@pytest.mark.parametrize("mode", ["softmax", "gumbel", "straight_through", "gumbel_straight_through"])
def test_training_modes_pass_gradient(mode):
    raw = torch.randn(8, 6, requires_grad=True)
    logits, mask = pad_groups(raw, [2, 4])
    out = winner_take_all(logits, mask, mode=mode, temperature=0.5, generator=torch.Generator().manual_seed(0))
    (out.code[:, mask] * torch.arange(6.0)).sum().backward()
    assert raw.grad is not None
    assert raw.grad.abs().sum() > 0


def test_straight_through_forward_is_one_hot():
    logits, mask = pad_groups(torch.randn(16, 7), [3, 4])
    out = winner_take_all(logits, mask, mode="straight_through", temperature=0.3)
    assert torch.allclose(out.code.sum(dim=-1), torch.ones(16, 2))
    code = out.code.detach()
    assert torch.allclose(code, code.round(), atol=1e-6)


def test_softmax_mode_sharpens_with_temperature():
    logits, mask = pad_groups(torch.tensor([[0.0, 1.0, 2.0]]), [3])
    warm = winner_take_all(logits, mask, mode="softmax", temperature=1.0).code.max()
    cold = winner_take_all(logits, mask, mode="softmax", temperature=0.05).code.max()
    assert cold > 0.99 > warm


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        winner_take_all(torch.zeros(1, 1, 2), mode="softmax", temperature=0.0)


def test_tasks_are_balanced():
    rng = np.random.default_rng(0)
    sizes = [3, 4, 10]
    prior = np.stack([rng.integers(0, s, 20000) for s in sizes], axis=1)
    tasks = make_tasks(200, sizes, prior, seed=1)
    fresh = np.stack([rng.integers(0, s, 20000) for s in sizes], axis=1)
    rates = tasks.labels(fresh).mean(axis=0)
    assert np.abs(rates - 0.5).max() < 0.05
    assert tasks.weights.shape == (200, 17)


def test_tasks_follow_seed():
    prior = np.zeros((10, 2), dtype=np.int64)
    first = make_tasks(5, [2, 3], prior, seed=7).weights
    assert np.array_equal(first, make_tasks(5, [2, 3], prior, seed=7).weights)
    assert not np.array_equal(first, make_tasks(5, [2, 3], prior, seed=8).weights)


def test_one_hot_concatenates_factors():
    z = one_hot(np.array([[1, 0], [0, 2]]), [2, 3])
    assert z.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]]


def test_naming_recovers_known_permutation():
    rng = np.random.default_rng(3)
    factors = [Factor("shape", "shape", ("a", "b", "c")), Factor("colour", "colour", ("r", "g", "b", "y"))]
    labels = np.stack([rng.integers(0, 3, 3000), rng.integers(0, 4, 3000)], axis=1)
    # Group 0 codes colour through a permutation, group 1 codes shape through another.
    colour_to_unit = np.array([2, 0, 3, 1])
    shape_to_unit = np.array([1, 2, 0])
    winners = np.stack([colour_to_unit[labels[:, 1]], shape_to_unit[labels[:, 0]]], axis=1)
    naming = name_units(winners, labels, [4, 3], factors)
    assert naming.groups[0].factor == 1
    assert naming.groups[1].factor == 0
    assert [u.value for u in naming.groups[0].units] == np.argsort(colour_to_unit).tolist()
    assert [u.value for u in naming.groups[1].units] == np.argsort(shape_to_unit).tolist()
    assert np.array_equal(decode(winners, naming, 2), labels)


def test_naming_reports_dead_and_mixed_units():
    rng = np.random.default_rng(4)
    factors = [Factor("shape", "shape", ("a", "b"))]
    labels = rng.integers(0, 2, (2000, 1))
    # Unit 0 wins for every a and half of the b images, unit 1 only for b, unit 2 never.
    winners = np.where(labels[:, 0] == 0, 0, rng.integers(0, 2, 2000))[:, None]
    naming = name_units(winners, labels, [3], factors)
    assert [u.status for u in naming.groups[0].units] == ["mixed", "named", "dead"]
    assert naming.groups[0].units[1].value == 1
    assert naming.counts() == {"named": 1, "mixed": 1, "dead": 1}
