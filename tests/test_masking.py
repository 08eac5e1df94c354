"""The masking math against hand-computed cases."""

import numpy as np
import pytest

from fedgma.strategies.masking import (
    apply_mask_to_update,
    MaskedLayer,
    build_mask,
    fedgma_layer,
    gma_layer,
    hard_mask,
    mask_effect,
    mask_statistics,
    sign_agreement,
    soft_mask,
    weighted_mean,
)


def arr(*values):
    return np.array(values, dtype=np.float32)


def test_agreement_counts_signs_with_sign_of_zero_as_zero():
    updates = [arr(1.0, -2.0, 0.0, 3.0), arr(0.5, 1.0, 0.0, 0.0), arr(2.0, -1.0, 0.0, -1.0)]
    # coord 0: +,+,+ -> 1; coord 1: -,+,- -> 1/3; coord 2: 0,0,0 -> 0; coord 3: +,0,- -> 0
    np.testing.assert_allclose(sign_agreement(updates), [1.0, 1 / 3, 0.0, 0.0])


def test_all_agree_and_all_disagree():
    assert sign_agreement([arr(1, -1), arr(2, -3)]).tolist() == [1.0, 1.0]
    assert sign_agreement([arr(1, -1), arr(-2, 3)]).tolist() == [0.0, 0.0]


def test_weighted_agreement_uses_example_counts():
    # signs +, -, - with weights 6, 1, 1 -> |6 - 2| / 8 = 0.5 (unweighted: 1/3)
    updates = [arr(1.0), arr(-1.0), arr(-1.0)]
    assert sign_agreement(updates, [6, 1, 1]).tolist() == [0.5]
    assert sign_agreement(updates).tolist() == pytest.approx([1 / 3])


def test_tie_at_the_threshold_keeps_the_coordinate():
    # 7 of 10 positive, 3 negative: A = 0.4 exactly
    agreement = sign_agreement([arr(1.0)] * 7 + [arr(-1.0)] * 3)
    assert agreement.tolist() == [0.4]
    assert hard_mask(agreement, 0.4).tolist() == [1.0]
    assert hard_mask(agreement, 0.41).tolist() == [0.0]


def test_hard_and_soft_masks():
    agreement = np.array([0.0, 0.2, 0.5, 1.0])
    assert hard_mask(agreement, 0.5).tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(soft_mask(agreement, 0.5), [0.0, 0.2, 1.0, 1.0])


def test_tau_zero_keeps_everything_and_tau_one_only_unanimous():
    agreement = np.array([0.0, 0.3, 1.0])
    assert hard_mask(agreement, 0.0).tolist() == [1, 1, 1]
    assert soft_mask(agreement, 0.0).tolist() == [1, 1, 1]
    assert hard_mask(agreement, 1.0).tolist() == [0, 0, 1]
    np.testing.assert_allclose(soft_mask(agreement, 1.0), [0.0, 0.3, 1.0])


def test_build_mask_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        build_mask(np.zeros(2), 0.5, "medium")


def test_weighted_mean_by_hand():
    assert weighted_mean([arr(1.0, 2.0), arr(4.0, 8.0)], [1, 3]).tolist() == [3.25, 6.5]
    with pytest.raises(ValueError):
        weighted_mean([arr(1.0)], [0])


def test_apply_mask_to_update():
    reference, client = arr(1.0, 1.0, 1.0), arr(3.0, 5.0, 0.1)
    out = apply_mask_to_update(reference, client, np.array([1.0, 0.5, 0.0], dtype=np.float32))
    assert out[0] == client[0]  # bit for bit where the mask is 1
    np.testing.assert_allclose(out, [3.0, 3.0, 1.0])


def test_agreement_relative_to_a_reference_equals_agreement_of_differences():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(50).astype(np.float32)
    clients = [reference + rng.standard_normal(50).astype(np.float32) * (rng.random(50) > 0.3) for _ in range(7)]
    direct = sign_agreement([c - reference for c in clients])
    assert np.array_equal(sign_agreement(clients, reference=reference), direct)
    weights = rng.integers(1, 100, 7)
    np.testing.assert_allclose(sign_agreement(clients, weights, reference), sign_agreement(
        [c - reference for c in clients], weights), rtol=1e-12)


def test_statistics_by_layer():
    agreements = {"a": sign_agreement([arr(1, 1), arr(1, -1)]), "b": sign_agreement([arr(-1), arr(-1)])}
    masks = {name: hard_mask(a, 0.5) for name, a in agreements.items()}
    assert masks["a"].tolist() == [1, 0] and masks["b"].tolist() == [1]
    references = {"a": arr(0, 0), "b": arr(0)}
    # The averaged update is (3, 0) and (4): norm 5. Masking moves layer b by 2.5, layer a not at all.
    layers = {"a": MaskedLayer(arr(3, 0), arr(3, 0), masks["a"], agreements["a"]),
              "b": MaskedLayer(arr(6.5), arr(4), masks["b"], agreements["b"])}
    stats = mask_statistics(references, layers)
    assert stats["mask-density"] == pytest.approx(2 / 3)
    assert stats["mean-agreement"] == pytest.approx(2 / 3)
    assert stats["mask-density/a"] == 0.5 and stats["mask-density/b"] == 1.0
    assert stats["mask-effect"] == pytest.approx(0.5)


def test_mask_effect_is_zero_without_masking_and_server_step():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(20).astype(np.float32)
    clients = [reference + rng.standard_normal(20).astype(np.float32) for _ in range(4)]
    untouched = {"w": fedgma_layer(reference, clients, [1, 2, 3, 4], 0.0, 0.0)}
    assert mask_effect({"w": reference}, untouched) == 0.0
    full_step = {"w": fedgma_layer(reference, clients, [1, 2, 3, 4], 0.0, 1.0)}  # pseudo-gradient, all kept
    assert mask_effect({"w": reference}, full_step) == pytest.approx(1.0, rel=1e-5)
    assert mask_effect({"w": reference}, {"w": gma_layer(reference, clients, [1, 1, 1, 1], 0.0, "hard")}) == 0.0
