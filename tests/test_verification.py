"""The 10-fold protocol against a literal loop implementation of the original and against known answers."""
import numpy as np
import pytest

from probface_tf.eval.verification import (VerificationError, best_threshold, fold_sizes, kfold_splits,
                                           ten_fold_accuracy)


def _loop_accuracy(scores, labels, thresholds=None):
    """Threshold search written as a plain loop: candidates = sorted positive scores."""
    if thresholds is None:
        thresholds = np.sort(scores[labels])
    accs = np.zeros(len(thresholds))
    for i, t in enumerate(thresholds):
        accs[i] = np.mean((scores >= t) == labels)
    best = accs[np.argmax(accs)]
    return best, np.mean(thresholds[accs == best])


def _loop_ten_fold(scores, labels, n_folds=10):
    n = len(scores)
    sizes = [n // n_folds + (1 if k < n % n_folds else 0) for k in range(n_folds)]
    accs = np.zeros(n_folds, dtype=np.float32)
    thrs = np.zeros(n_folds, dtype=np.float32)
    start = 0
    for k, size in enumerate(sizes):
        test = list(range(start, start + size))
        train = [i for i in range(n) if i < start or i >= start + size]
        start += size
        _, thrs[k] = _loop_accuracy(scores[train], labels[train])
        accs[k], _ = _loop_accuracy(scores[test], labels[test], np.array([thrs[k]]))
    return np.mean(accs), np.mean(thrs), accs, thrs


def test_fold_sizes_are_contiguous_first_folds_larger():
    assert list(fold_sizes(23)) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    splits = kfold_splits(23)
    tests = [list(test) for _, test in splits]
    assert tests[0] == [0, 1, 2] and tests[3] == [9, 10] and tests[-1] == [21, 22]
    for train, test in splits:
        assert sorted(np.concatenate([train, test])) == list(range(23))
    assert [len(t) for _, t in kfold_splits(7000)] == [700] * 10


def test_best_threshold_matches_loop_with_ties(rng):
    scores = np.round(rng.standard_normal(300), 1).astype(np.float32)  # many ties
    labels = rng.random(300) < 0.5
    scores[labels] += np.float32(0.8)
    acc, thr = best_threshold(scores, labels)
    ref_acc, ref_thr = _loop_accuracy(scores, labels)
    assert acc == ref_acc
    assert thr == ref_thr and np.asarray(thr).dtype == np.float32


@pytest.mark.parametrize("n", [10, 57, 600])
def test_ten_fold_matches_loop_exactly(rng, n):
    labels = rng.random(n) < 0.5
    scores = (rng.standard_normal(n) + 1.5 * labels).astype(np.float32)
    got = ten_fold_accuracy(scores, labels)
    ref_acc, ref_thr, ref_accs, ref_thrs = _loop_ten_fold(scores, labels)
    np.testing.assert_array_equal(got.fold_thresholds, ref_thrs)
    np.testing.assert_array_equal(got.fold_accuracies, ref_accs)
    assert got.accuracy == float(ref_acc) and got.threshold == float(ref_thr)


def test_perfectly_separable_is_one(rng):
    labels = rng.random(200) < 0.5
    # equal positive scores of 0.5 (exact float32 sums) above every negative
    scores = np.where(labels, 0.5, rng.uniform(-1, 0.4, 200)).astype(np.float32)
    got = ten_fold_accuracy(scores, labels)
    assert got.accuracy == 1.0
    np.testing.assert_array_equal(got.fold_thresholds, np.float32(0.5))


def test_threshold_is_mean_of_all_best_candidates():
    # candidates 0.2 and 0.6 both reach 5/6 (0.2 keeps the 0.2 positive, 0.6 rejects the 0.3 negative)
    scores = np.array([0.2, 0.6, 0.7, 0.1, 0.3, 0.05], np.float32)
    acc, thr = best_threshold(scores, np.array([1, 1, 1, 0, 0, 0], bool))
    assert acc == pytest.approx(5 / 6) and thr == pytest.approx(0.4)
    # A held-out positive below the training positives is rejected: separable is not always 1.0.
    labels = np.array([True, False] * 50)
    scores = np.where(labels, 0.9, 0.1).astype(np.float32) + np.linspace(0, 0.05, 100).astype(np.float32)
    got = ten_fold_accuracy(scores, labels)
    assert got.accuracy == float(_loop_ten_fold(scores, labels)[0]) < 1.0


def test_known_answer_hand_made():
    # 10 pairs, one per fold. Held-out 0.8: the other positives {0.2, 0.85, 0.9, 0.95} score best at 0.85
    # (8/9), so 0.8 is rejected; held-out 0.2 falls below the chosen 0.8. Held-out negatives 0.3 and 0.7:
    # candidates 0.2 and 0.8 tie at 8/9, the threshold is their mean 0.5, so 0.7 is accepted (wrong).
    scores = np.array([0.9, 0.8, 0.2, 0.85, 0.95, 0.1, 0.3, 0.7, 0.15, 0.05], np.float32)
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    got = ten_fold_accuracy(scores, labels)
    np.testing.assert_array_equal(got.fold_accuracies, [1, 0, 0, 1, 1, 1, 1, 0, 1, 1])
    np.testing.assert_allclose(got.fold_thresholds, [0.8, 0.85, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5, 0.8, 0.8], rtol=1e-6)
    assert got.accuracy == pytest.approx(0.7) and got.threshold == pytest.approx(0.745)


def test_errors_are_clear():
    with pytest.raises(VerificationError, match="at least 10 pairs, got 4"):
        ten_fold_accuracy(np.ones(4), np.ones(4, bool))
    labels = np.zeros(20, bool)
    labels[0] = True
    with pytest.raises(VerificationError, match="fold 1/10 of 20 pairs: no positive pair"):
        ten_fold_accuracy(np.arange(20.0), labels)
    with pytest.raises(VerificationError, match="2 of 20 scores are not finite"):
        s = np.arange(20.0)
        s[[3, 5]] = np.nan
        ten_fold_accuracy(s, np.arange(20) % 2 == 0)
    with pytest.raises(VerificationError, match="equal length"):
        ten_fold_accuracy(np.ones(20), np.ones(19, bool))
