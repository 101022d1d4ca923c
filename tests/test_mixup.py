"""Mixup's batches: blends of real pairs, labels and weights blended alike, every image used."""

from __future__ import annotations

import numpy as np

from training.mixup import MixupBatches


def _batches(class_weight: dict[int, float] | None = None) -> MixupBatches:
    # Image i is filled with the value i, so a blend shows which two images it came from.
    images = np.arange(10, dtype=np.float32).repeat(16).reshape(10, 4, 4, 1)
    labels = np.array([0, 1] * 5)
    targets = np.eye(2, dtype=np.float32)[labels]
    return MixupBatches(images, targets, 4, 0.4, seed=7, class_weight=class_weight)


def test_each_blend_mixes_two_images_and_their_labels_in_one_proportion() -> None:
    batches = _batches()
    assert len(batches) == 3
    for index in range(len(batches)):
        images, targets = batches[index]
        rows = batches.order[index * 4 : (index + 1) * 4]
        assert images.shape == (len(rows), 4, 4, 1)
        np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)
        for image, target, row in zip(images, targets, rows, strict=True):
            assert np.ptp(image) < 1e-5
            assert any(_blend_of(float(image.flat[0]), target, row, p) for p in rows)


def _blend_of(value: float, target: np.ndarray, row: int, partner: int) -> bool:
    """Whether value and target are lam * row + (1 - lam) * partner for one lam in 0..1."""
    if partner == row:
        return np.isclose(value, row) and np.isclose(target[1], row % 2)
    lam = (value - partner) / (row - partner)
    expected = lam * (row % 2) + (1 - lam) * (partner % 2)
    return bool(-1e-6 <= lam <= 1 + 1e-6 and np.isclose(target[1], expected, atol=1e-5))


def test_every_image_leads_one_blend_per_epoch_in_a_new_order() -> None:
    batches = _batches()
    first = batches.order.copy()
    assert sorted(first) == list(range(10))
    batches.on_epoch_end()
    assert sorted(batches.order) == list(range(10))
    assert not np.array_equal(first, batches.order)


def test_class_weights_are_blended_with_their_images() -> None:
    weights = {0: 3.0, 1: 1.0}
    _, targets, sample_weights = _batches(weights)[0]
    # A blend that is share s normal counts 3 s + 1 (1 - s).
    np.testing.assert_allclose(sample_weights, 3 * targets[:, 0] + 1 * targets[:, 1], rtol=1e-5)


def test_the_same_seed_gives_the_same_batches() -> None:
    for left, right in zip(_batches()[1], _batches()[1], strict=True):
        np.testing.assert_array_equal(left, right)
