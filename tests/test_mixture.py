"""EM core against independent references: scikit-learn, closed forms, known mixtures."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from torchgmm.mixture import (
    ConvergenceWarning,
    GaussianMixture,
    estimate_log_prob,
    fit_gaussian_mixture,
)
from torchgmm._checks import ShapeError, check_generators

sklearn_mixture = pytest.importorskip("sklearn.mixture")

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def three_blobs(seed: int = 0, d: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.normal(0, 1, (300, d)),
            rng.normal(4, 0.5, (200, d)) @ rng.normal(size=(d, d)),
            rng.normal(-3, 2, (100, d)),
        ]
    )


def identity_precisions(covariance_type: str, k: int, d: int) -> np.ndarray:
    return {
        "full": np.stack([np.eye(d)] * k),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def holding_sklearns_fit(sk, x: torch.Tensor) -> GaussianMixture:
    """A GaussianMixture holding the parameters of scikit-learn's fitted ``sk`` (0 EM
    iterations on ``x``, ``(N, D)`` or a batch ``(B, N, D)``)."""
    return GaussianMixture(
        len(sk.weights_),
        covariance_type=sk.covariance_type,
        max_iter=0,
        weights_init=torch.tensor(sk.weights_),
        means_init=torch.tensor(sk.means_),
        precisions_init=torch.tensor(sk.precisions_),
    ).fit(x)


def fit_both(
    x: np.ndarray, covariance_type: str, weights_init, means_init, sample_weight=None, repeated=None, **options
):
    """scikit-learn's and torchgmm's fits from the same explicit init (identity precisions).

    With ``sample_weight`` (integer counts), scikit-learn fits ``repeated``, the rows repeated
    by their counts, and torchgmm the weighted rows. Warnings (e.g. no convergence at a small
    ``max_iter``) are silenced: these tests compare the iterations, not the stopping.
    """
    k, d = len(weights_init), x.shape[1]
    init = dict(
        weights_init=np.asarray(weights_init),
        means_init=means_init,
        precisions_init=identity_precisions(covariance_type, k, d),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sklearn_mixture.GaussianMixture(k, covariance_type=covariance_type, **init, **options).fit(
            x if repeated is None else repeated
        )
        gm = GaussianMixture(
            k,
            covariance_type=covariance_type,
            **{name: torch.tensor(value) for name, value in init.items()},
            **options,
        ).fit(
            torch.tensor(x),
            sample_weight=None if sample_weight is None else torch.tensor(sample_weight, dtype=torch.float64),
        )
    return sk, gm


class TestSklearnParity:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_fixed_iterations_equal_sklearn(self, covariance_type):
        x = three_blobs()
        k, d = 3, x.shape[1]
        means = x[[5, 350, 550]]
        weights = np.array([0.2, 0.3, 0.5])
        precisions = identity_precisions(covariance_type, k, d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = sklearn_mixture.GaussianMixture(
                k,
                covariance_type=covariance_type,
                tol=0,
                max_iter=25,
                weights_init=weights,
                means_init=means,
                precisions_init=precisions,
            ).fit(x)
        fit = fit_gaussian_mixture(
            torch.tensor(x),
            k,
            covariance_type=covariance_type,
            tol=0,
            max_iter=25,
            weights_init=torch.tensor(weights),
            means_init=torch.tensor(means),
            precisions_init=torch.tensor(precisions),
        )
        assert relative_error(fit.weights[0], sk.weights_) < 1e-6
        assert relative_error(fit.means[0], sk.means_) < 1e-6
        assert relative_error(fit.covariances[0], sk.covariances_) < 1e-6
        assert relative_error(fit.precisions_cholesky[0], sk.precisions_cholesky_) < 1e-6
        assert relative_error(fit.lower_bound[0], sk.lower_bound_) < 1e-6
        assert int(fit.n_iter[0]) == sk.n_iter_ == 25

    @pytest.mark.parametrize("covariance_type", ["full", "diag"])
    def test_converges_at_same_iteration_with_tol(self, covariance_type):
        x = three_blobs(1)
        means = x[[0, 320, 560]]
        precisions = identity_precisions(covariance_type, 3, 3)
        sk = sklearn_mixture.GaussianMixture(
            3,
            covariance_type=covariance_type,
            tol=1e-4,
            max_iter=500,
            weights_init=np.full(3, 1 / 3),
            means_init=means,
            precisions_init=precisions,
        ).fit(x)
        gm = GaussianMixture(
            3,
            covariance_type=covariance_type,
            tol=1e-4,
            max_iter=500,
            weights_init=torch.full((3,), 1 / 3, dtype=torch.float64),
            means_init=torch.tensor(means),
            precisions_init=torch.tensor(precisions),
        ).fit(torch.tensor(x))
        assert bool(gm.converged_) and sk.converged_
        assert int(gm.n_iter_) == sk.n_iter_
        assert relative_error(gm.means_, sk.means_) < 1e-6

    def test_predictions_equal_sklearn(self):
        x = three_blobs(2)
        sk = sklearn_mixture.GaussianMixture(3, random_state=0).fit(x)
        gm = GaussianMixture(
            3,
            weights_init=torch.tensor(sk.weights_),
            means_init=torch.tensor(sk.means_),
            precisions_init=torch.tensor(sk.precisions_),
            max_iter=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(torch.tensor(x))
        xt = torch.tensor(x)
        np.testing.assert_allclose(gm.score_samples(xt).numpy(), sk.score_samples(x), rtol=1e-9)
        np.testing.assert_allclose(gm.predict_proba(xt).numpy(), sk.predict_proba(x), atol=1e-9)
        np.testing.assert_array_equal(gm.predict(xt).numpy(), sk.predict(x))
        assert float(gm.score(xt)) == pytest.approx(sk.score(x), rel=1e-9)
        assert float(gm.bic(xt)) == pytest.approx(sk.bic(x), rel=1e-9)
        assert float(gm.aic(xt)) == pytest.approx(sk.aic(x), rel=1e-9)


class TestWeightedCriteria:
    """score/bic/aic with sample_weight equal scikit-learn's on the rows repeated by integer
    weights (scikit-learn has no sample weights; integer weights make the reference exact)."""

    @staticmethod
    def weighted_data(seed: int):
        rng = np.random.default_rng(seed)
        x = three_blobs(seed)
        counts = rng.integers(0, 4, size=len(x))
        return x, counts, np.repeat(x, counts, axis=0)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_equal_sklearn_on_repeated_rows(self, covariance_type):
        x, counts, repeated = self.weighted_data(20)
        assert counts.sum() != len(x)  # the sample size is the total weight, not N
        sk, gm = fit_both(
            x,
            covariance_type,
            [0.2, 0.3, 0.5],
            x[[5, 350, 550]],
            sample_weight=counts,
            repeated=repeated,
            tol=0,
            max_iter=20,
        )
        xt, w = torch.tensor(x), torch.tensor(counts, dtype=torch.float64)
        # The fit's lower bound is the weighted mean log-likelihood, scikit-learn's on the rows.
        assert float(gm.lower_bound_) == pytest.approx(sk.lower_bound_, rel=1e-10)
        assert relative_error(gm.means_, sk.means_) < 1e-10
        assert float(gm.score(xt, w)) == pytest.approx(sk.score(repeated), rel=1e-10)
        assert float(gm.bic(xt, w)) == pytest.approx(sk.bic(repeated), rel=1e-10)
        assert float(gm.aic(xt, w)) == pytest.approx(sk.aic(repeated), rel=1e-10)
        # Integer weights as an int64 tensor too (cast to the model's dtype).
        assert float(gm.bic(xt, torch.tensor(counts))) == pytest.approx(sk.bic(repeated), rel=1e-10)

    def test_reviewer_case_bic_uses_total_weight(self):
        # 600 rows carrying counts.sum() samples: the penalty is p log(sum w), not p log(600).
        x, counts, repeated = self.weighted_data(21)
        sk = sklearn_mixture.GaussianMixture(2, random_state=0).fit(repeated)
        gm = holding_sklearns_fit(sk, torch.tensor(x))
        xt, w = torch.tensor(x), torch.tensor(counts, dtype=torch.float64)
        p = 2 * 6 + 2 * 3 + 1
        assert float(gm.bic(xt, w)) == pytest.approx(sk.bic(repeated), rel=1e-10)
        assert float(gm.bic(xt, w) - gm.aic(xt, w)) == pytest.approx(p * math.log(counts.sum()) - 2 * p, rel=1e-12)
        assert float(gm.score(xt, w)) == pytest.approx(sk.score(repeated), rel=1e-10)

    def test_batched_criteria_are_per_problem(self):
        x, counts0, repeated0 = self.weighted_data(22)
        counts1 = np.random.default_rng(23).integers(1, 6, size=len(x))
        repeated1 = np.repeat(x, counts1, axis=0)
        sk = sklearn_mixture.GaussianMixture(3, random_state=0).fit(x)
        gm = holding_sklearns_fit(sk, torch.tensor(np.stack([x, x])))
        xt = torch.tensor(np.stack([x, x]))
        w = torch.tensor(np.stack([counts0, counts1]), dtype=torch.float64)
        expected = {
            "bic": [sk.bic(repeated0), sk.bic(repeated1)],
            "aic": [sk.aic(repeated0), sk.aic(repeated1)],
            "score": [sk.score(repeated0), sk.score(repeated1)],
        }
        for name, values in expected.items():
            got = getattr(gm, name)(xt, w)
            assert got.shape == (2,)
            np.testing.assert_allclose(got.numpy(), values, rtol=1e-10)
        # Without weights: the row count, as before.
        np.testing.assert_allclose(gm.bic(xt).numpy(), [sk.bic(x)] * 2, rtol=1e-10)

    def test_bad_weights_are_refused(self):
        gm = GaussianMixture(2, random_state=0).fit(torch.randn(50, 2))
        x = torch.randn(10, 2)
        with pytest.raises(ValueError, match="`sample_weight` must be non-negative"):
            gm.score(x, -torch.ones(10))
        with pytest.raises(ShapeError, match=r"`sample_weight` must have shape \(B, N\) = \(1, 10\)"):
            gm.bic(x, torch.ones(9))
        with pytest.raises(ValueError, match="sums to zero"):
            gm.aic(x, torch.zeros(10))
        with pytest.raises(ValueError, match="`sample_weight` contains 1 NaN"):
            gm.bic(x, torch.tensor([float("nan")] + [1.0] * 9))


class TestSklearnAttributes:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_precisions_and_n_features_in_equal_sklearn(self, covariance_type):
        x = three_blobs(24, d=4)
        d = 4
        sk, gm = fit_both(x, covariance_type, [0.3, 0.3, 0.4], x[[5, 350, 550]], tol=0, max_iter=10)
        assert gm.precisions_.shape == sk.precisions_.shape
        assert relative_error(gm.precisions_, sk.precisions_) < 1e-10
        # ... and they invert the covariances (full/tied: P Sigma = I; diag/spherical: p sigma^2 = 1).
        if covariance_type in ("full", "tied"):
            eye = torch.eye(d, dtype=torch.float64).expand_as(gm.covariances_)
            torch.testing.assert_close(gm.precisions_ @ gm.covariances_, eye, rtol=0, atol=1e-10)
        else:
            torch.testing.assert_close(gm.precisions_ * gm.covariances_, torch.ones_like(gm.covariances_))
        assert gm.n_features_in_ == sk.n_features_in_ == 4
        assert isinstance(gm.n_features_in_, int)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_lower_bounds_equal_sklearn(self, covariance_type):
        x = three_blobs(27)
        sk, gm = fit_both(x, covariance_type, np.full(3, 1 / 3), x[[0, 320, 560]], tol=1e-5, max_iter=500)
        assert sk.converged_ and len(sk.lower_bounds_) == sk.n_iter_ > 5
        assert gm.lower_bounds_.shape == (sk.n_iter_,)
        np.testing.assert_allclose(gm.lower_bounds_.numpy(), sk.lower_bounds_, rtol=1e-10)
        assert float(gm.lower_bounds_[-1]) == float(gm.lower_bound_)

    def test_lower_bounds_batched_rows_are_the_single_fits(self):
        # Problems stop at different iterations, and the working set shrinks (3 of 4 done):
        # each row is that problem's own run, NaN-padded to the longest.
        rng = np.random.default_rng(28)
        easy = [np.concatenate([rng.normal(-10, 1, 100), rng.normal(10, 1, 100)]) for _ in range(3)]
        x = torch.tensor(np.stack(easy + [rng.normal(0, 1, 200)]))[..., None]
        fit = lambda data: GaussianMixture(2, init_params="range", tol=1e-5, max_iter=100).fit(data)  # noqa: E731
        batched = fit(x)
        alones = [fit(x[i]) for i in range(4)]
        n_iter = batched.n_iter_.tolist()
        assert batched.lower_bounds_.shape == (4, max(n_iter)) and max(n_iter[:3]) + 4 < n_iter[3]
        for i, alone in enumerate(alones):
            torch.testing.assert_close(batched.lower_bounds_[i, : n_iter[i]], alone.lower_bounds_, rtol=1e-12, atol=0)
            assert torch.isnan(batched.lower_bounds_[i, n_iter[i] :]).all()
        torch.testing.assert_close(
            batched.lower_bounds_.gather(1, batched.n_iter_[:, None] - 1)[:, 0], batched.lower_bound_, rtol=0, atol=0
        )

    def test_lower_bounds_not_in_state_dict(self):
        x = torch.tensor(three_blobs(29))
        gm = GaussianMixture(2, random_state=0).fit(x)
        assert "lower_bounds_" not in gm.state_dict()  # older checkpoints load unchanged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            assert GaussianMixture(2, max_iter=0, random_state=0).fit(x).lower_bounds_.shape == (0,)
        other = GaussianMixture(2, random_state=1).fit(x)
        other.load_state_dict(gm.state_dict())
        assert other.lower_bounds_.numel() == 0  # not the loaded parameters' run

    def test_batched_and_unfitted(self):
        gm = GaussianMixture(2, covariance_type="tied")
        assert not hasattr(gm, "n_features_in_")  # as an unfitted scikit-learn estimator
        assert gm.precisions_.numel() == 0
        x = torch.tensor(np.stack([three_blobs(25), three_blobs(26)]))
        gm.fit(x)
        assert gm.precisions_.shape == (2, 3, 3) and gm.n_features_in_ == 3
        torch.testing.assert_close(gm.precisions_, torch.linalg.inv(gm.covariances_))
        fresh = GaussianMixture(2, covariance_type="tied")
        fresh.load_state_dict(gm.state_dict())  # derived from the loaded buffers
        torch.testing.assert_close(fresh.precisions_, gm.precisions_, rtol=0, atol=0)


class TestLogProb:
    def test_closed_form_standard_normal(self):
        x = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
        means = torch.zeros(1, 1, 2, dtype=torch.float64)
        for covariance_type, prec in {
            "full": torch.eye(2, dtype=torch.float64)[None, None],
            "tied": torch.eye(2, dtype=torch.float64)[None],
            "diag": torch.ones(1, 1, 2, dtype=torch.float64),
            "spherical": torch.ones(1, 1, dtype=torch.float64),
        }.items():
            lp = estimate_log_prob(x, means, prec, covariance_type)[0, :, 0]
            expected = -math.log(2 * math.pi) - 0.5 * (x[0] ** 2).sum(-1)
            torch.testing.assert_close(lp, expected)

    def test_far_from_origin_float32(self):
        # Centring keeps the quadratic expansion accurate for data far from the origin.
        x = torch.tensor([[[1000.0], [1001.0]]])
        lp = estimate_log_prob(x, torch.tensor([[[1000.0]]]), torch.ones(1, 1, 1, 1), "full")
        expected = torch.tensor([-0.5 * math.log(2 * math.pi), -0.5 * math.log(2 * math.pi) - 0.5])
        torch.testing.assert_close(lp[0, :, 0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_e_step_of_far_apart_components_has_no_subnormals_and_exact_sums(dtype):
    # Components 40 sigma apart: a_k - max_k a_k reaches -800, where exp gives subnormals
    # (float32) or 0, and is slow. The E-step clamps its exponent: responsibilities stay
    # normal numbers or 1, and the statistics are those of the exact (0/1) assignment.
    from torchgmm import mixture as gm

    means = torch.tensor([[[0.0], [40.0], [80.0]]], dtype=dtype)
    x = torch.cat([torch.linspace(-1, 1, 100, dtype=dtype) + m for m in (0.0, 40.0, 80.0)])[None, :, None]
    prec = torch.ones(1, 3, 1, 1, dtype=dtype)
    features = gm._quadratic_features(x - 40.0, "full")
    coefficients, constant = gm._log_prob_coefficients(means - 40.0, prec, "full")
    log_joint = gm._log_joint(features, coefficients, constant + math.log(1 / 3))
    assert float((log_joint - log_joint.amax(1, keepdim=True)).min()) < -700
    resp, log_likelihood = gm._normalise_(log_joint.clone())
    assert float(resp.min()) >= torch.finfo(dtype).tiny
    owner = torch.arange(3).repeat_interleave(100)
    exact = torch.nn.functional.one_hot(owner, 3).T.to(dtype)[None]
    torch.testing.assert_close(resp, exact, rtol=0, atol=1e-30)
    stats = gm._e_step_statistics(features, None, coefficients, constant + math.log(1 / 3))
    torch.testing.assert_close(stats.nk, torch.full((1, 3), 100.0, dtype=dtype), rtol=1e-6, atol=0)
    expected = estimate_log_prob(x, means, prec, "full").logsumexp(-1) + math.log(1 / 3)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(log_likelihood, expected, **tol)


class TestWeightsAndBatches:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_integer_weight_equals_repetition(self, covariance_type):
        rng = np.random.default_rng(3)
        x = np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal(5, 1, (40, 2))])
        counts = rng.integers(0, 4, size=len(x))
        counts[0] = 5
        repeated = np.repeat(x, counts, axis=0)
        kwargs = dict(
            covariance_type=covariance_type,
            tol=0,
            max_iter=15,
            means_init=torch.tensor(x[[0, 50]]),
        )
        weighted = fit_gaussian_mixture(
            torch.tensor(x), 2, sample_weight=torch.tensor(counts, dtype=torch.float64), **kwargs
        )
        plain = fit_gaussian_mixture(torch.tensor(repeated), 2, **kwargs)
        for a, b in zip(weighted[:5], plain[:5]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    @pytest.mark.parametrize("init_params", ["range", "kmeans++", "random"])
    def test_batched_equals_one_by_one(self, init_params):
        rng = np.random.default_rng(4)
        x = torch.tensor(
            rng.normal(size=(5, 200, 2)) + rng.normal(0, 5, size=(5, 1, 2)) * (rng.random((5, 200, 1)) > 0.5)
        )
        w = torch.tensor(rng.random((5, 200)))
        batched = fit_gaussian_mixture(x, 3, sample_weight=w, init_params="range", tol=1e-6, max_iter=200)
        for i in range(5):
            alone = fit_gaussian_mixture(x[i], 3, sample_weight=w[i], init_params="range", tol=1e-6, max_iter=200)
            for a, b in zip(batched[:7], alone[:7]):
                torch.testing.assert_close(a[i], b[0], rtol=1e-9, atol=1e-12)
            n = int(alone.n_iter[0])  # lower_bounds: NaN-padded to the longest problem's run
            torch.testing.assert_close(batched.lower_bounds[i, :n], alone.lower_bounds[0], rtol=1e-9, atol=1e-12)

    def test_converged_problem_stops_changing(self):
        rng = np.random.default_rng(5)
        easy = np.concatenate([rng.normal(-10, 1, 100), rng.normal(10, 1, 100)])
        hard = rng.normal(0, 1, 200)
        x = torch.tensor(np.stack([easy, hard]))[..., None]
        fit = fit_gaussian_mixture(x, 2, init_params="range", tol=1e-3, max_iter=300)
        assert int(fit.n_iter[0]) < int(fit.n_iter[1])
        alone = fit_gaussian_mixture(x[0], 2, init_params="range", tol=1e-3, max_iter=300)
        torch.testing.assert_close(fit.means[0], alone.means[0])
        assert int(alone.n_iter[0]) == int(fit.n_iter[0])


class TestRecovery:
    def test_1d_known_mixture(self):
        g = torch.Generator().manual_seed(0)
        truth_means, truth_std, truth_w = [-5.0, 0.0, 6.0], [1.0, 0.5, 2.0], [0.3, 0.2, 0.5]
        n = 30000
        parts = [
            torch.randn(int(n * w), generator=g, dtype=torch.float64) * s + m
            for m, s, w in zip(truth_means, truth_std, truth_w)
        ]
        x = torch.cat(parts)[:, None]
        gm = GaussianMixture(3, init_params="range", tol=1e-8, max_iter=500).fit(x)
        order = gm.means_[:, 0].argsort()
        torch.testing.assert_close(
            gm.means_[order, 0], torch.tensor(truth_means, dtype=torch.float64), atol=0.05, rtol=0
        )
        torch.testing.assert_close(
            gm.covariances_[order, 0, 0].sqrt(), torch.tensor(truth_std, dtype=torch.float64), atol=0.05, rtol=0
        )
        torch.testing.assert_close(gm.weights_[order], torch.tensor(truth_w, dtype=torch.float64), atol=0.01, rtol=0)

    def test_2d_known_mixture(self):
        g = torch.Generator().manual_seed(1)
        truth_means = torch.tensor([[0.0, 0.0], [6.0, 2.0], [-2.0, 7.0]])
        truth_cov = torch.tensor([[[1.0, 0.6], [0.6, 1.0]], [[2.0, 0.0], [0.0, 0.5]], [[0.5, -0.3], [-0.3, 1.5]]])
        chol = torch.linalg.cholesky(truth_cov)
        x = torch.cat([truth_means[k] + torch.randn(4000, 2, generator=g) @ chol[k].T for k in range(3)])
        gm = GaussianMixture(3, random_state=0, tol=1e-6, max_iter=300).fit(x)
        order = torch.cdist(truth_means, gm.means_).argmin(1)
        assert order.unique().numel() == 3
        torch.testing.assert_close(gm.means_[order], truth_means, atol=0.1, rtol=0)
        torch.testing.assert_close(gm.covariances_[order], truth_cov, atol=0.15, rtol=0)
        labels = gm.predict(x)
        truth_labels = torch.arange(3).repeat_interleave(4000)
        assert (order[labels] == truth_labels).float().mean() > 0.97 or (
            labels == order[truth_labels]
        ).float().mean() > 0.97

    def test_float32_close_to_float64(self):
        x = torch.tensor(three_blobs(6))
        kw = dict(init_params="range", tol=0, max_iter=30)
        f64 = fit_gaussian_mixture(x, 3, **kw)
        f32 = fit_gaussian_mixture(x.float(), 3, **kw)
        assert relative_error(f32.means[0], f64.means[0]) < 1e-3
        assert relative_error(f32.lower_bound, f64.lower_bound) < 1e-5


class TestInitialisation:
    def test_range_init_splits_interval(self):
        # K=2 over values 0..255: intervals [0, 127] and [128, 255] (the cameraman demo).
        values = torch.arange(256, dtype=torch.float64)[:, None]
        counts = torch.ones(256, dtype=torch.float64)
        fit = fit_gaussian_mixture(values, 2, sample_weight=counts, init_params="range", max_iter=0)
        torch.testing.assert_close(fit.means[0, :, 0], torch.tensor([63.5, 191.5], dtype=torch.float64))
        expected_var = torch.arange(128.0, dtype=torch.float64).var(unbiased=False) + 1e-6
        torch.testing.assert_close(fit.covariances[0, :, 0, 0], expected_var.repeat(2))
        torch.testing.assert_close(fit.weights[0], torch.tensor([0.5, 0.5], dtype=torch.float64))

    def test_range_init_axis_sign_is_fixed(self, device):
        # The principal axis's sign is arbitrary (LAPACK and cuSOLVER differ), which would
        # reverse the component order: it is oriented so its largest coordinate is positive,
        # so component 0 holds the points lowest along that coordinate, on every device.
        g = torch.Generator().manual_seed(0)
        angles = torch.rand(40, generator=g, dtype=torch.float64) * 2 * math.pi
        t = torch.linspace(-1, 1, 30, dtype=torch.float64)
        for angle in angles:
            direction = torch.stack([angle.cos(), angle.sin()])
            x = (t[:, None] * direction + 0.01 * torch.randn(30, 2, generator=g, dtype=torch.float64)).to(device)
            fit = fit_gaussian_mixture(x, 3, init_params="range", max_iter=0)
            lead = fit.means[0, :, direction.abs().argmax()].cpu()
            assert lead[0] < lead[1] < lead[2], float(angle)

    def test_seeded_generator_is_reproducible(self):
        x = torch.tensor(three_blobs(7))
        a = GaussianMixture(3, random_state=3).fit(x)
        b = GaussianMixture(3, random_state=3).fit(x)
        torch.testing.assert_close(a.means_, b.means_, rtol=0, atol=0)

    def test_numpy_random_states_are_accepted_as_in_sklearn(self):
        # scikit-learn users pass RandomState objects: the same seed gives the same fit, and
        # a fit advances the RandomState as scikit-learn's does (the next fit draws anew)
        x = torch.tensor(three_blobs(7))
        fit = lambda state: GaussianMixture(3, init_params="random_from_data", max_iter=0, random_state=state).fit(x)
        torch.testing.assert_close(
            fit(np.random.RandomState(5)).means_, fit(np.random.RandomState(5)).means_, rtol=0, atol=0
        )
        shared = np.random.RandomState(5)
        assert not torch.equal(fit(shared).means_, fit(shared).means_)
        torch.testing.assert_close(
            fit(np.random.default_rng(2)).means_, fit(np.random.default_rng(2)).means_, rtol=0, atol=0
        )

    @pytest.mark.parametrize("state", ["0", 1.5, True, -1])
    def test_other_random_states_are_refused_by_name(self, state):
        with pytest.raises((TypeError, ValueError), match="`random_state` must be"):
            GaussianMixture(2, random_state=state).fit(torch.randn(20, 2))


def reviewer_blobs() -> np.ndarray:
    """Three overlapping 3-D blobs (the reviewer's gmm_vs_sklearn.py data)."""
    rng = np.random.default_rng(0)
    return np.concatenate(
        [
            rng.normal([0, 0, 0], [1, 2, 0.5], (400, 3)),
            rng.normal([5, 5, 0], 1, (300, 3)),
            rng.normal([0, 6, 4], [0.5, 1, 1], (300, 3)),
        ]
    )


def separated_blobs(seed: int, sizes=(50, 120, 80, 30), spacing: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance 2-D blobs ``spacing`` apart; returns (x, true labels)."""
    rng = np.random.default_rng(seed)
    centres = spacing * np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return centres[labels] + rng.normal(size=(len(labels), 2)), labels


def rows_of(x: np.ndarray, means: torch.Tensor) -> list[int]:
    """The row of ``x`` each mean is (to rounding: fits run in centred coordinates)."""
    distances = ((x[:, None] - means.numpy()[None]) ** 2).sum(-1)  # (N, K)
    assert distances.min(0).max() < 1e-26 * (x * x).max()  # |mean - row| < 1e-13 |x|
    return distances.argmin(0).tolist()


def initial_fit(x, k, **kwargs) -> GaussianMixture:
    """The parameters EM starts from (max_iter=0 returns them, as in scikit-learn, which
    does not warn of convergence then: neither may we)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return GaussianMixture(k, max_iter=0, **kwargs).fit(x)


@pytest.mark.parametrize("init_params", ["kmeans", "kmeans++", "k-means++", "random_from_data", "random"])
def test_one_generator_per_problem_gives_each_its_alone_fit(init_params):
    """With a sequence of B generators each problem's random draws are its own: its fit is
    the one it gets alone with that generator, whatever else is in the batch."""
    x = torch.tensor(np.stack([three_blobs(seed) for seed in range(3)]))
    seeds = [11, 12, 13]
    batched = fit_gaussian_mixture(
        x, 3, init_params=init_params, max_iter=30, generator=[torch.Generator().manual_seed(s) for s in seeds]
    )
    for i, seed in enumerate(seeds):
        alone = fit_gaussian_mixture(
            x[i : i + 1], 3, init_params=init_params, max_iter=30, generator=torch.Generator().manual_seed(seed)
        )
        torch.testing.assert_close(batched.means[i], alone.means[0], rtol=1e-10, atol=1e-10)
        assert int(batched.n_iter[i]) == int(alone.n_iter[0])
    with pytest.raises(ValueError, match="sequence of 3"):
        fit_gaussian_mixture(x, 3, init_params=init_params, generator=[torch.Generator()] * 2)


def test_generator_on_another_device_is_named():
    # PyTorch's own error ("Expected a 'cuda' device type for generator") names no argument
    cpu = torch.Generator()
    check_generators([cpu, cpu], 2, torch.device("cpu"))
    for generator in (cpu, [cpu, cpu]):
        with pytest.raises(ValueError, match=r"`generator` is on cpu but the data are on cuda.*device='cuda'"):
            check_generators(generator, 2, torch.device("cuda"))
    with pytest.raises(ValueError, match="`random_state` is on cpu but the data are on cuda:0"):
        check_generators(cpu, 1, torch.device("cuda:0"), name="random_state")


@pytest.mark.cuda
def test_cpu_generator_with_cuda_data_is_refused_by_name():
    from torchgmm import segment_images

    x = torch.tensor(three_blobs(0)).cuda()
    with pytest.raises(ValueError, match="`generator` is on cpu but the data are on cuda"):
        fit_gaussian_mixture(x, 3, generator=torch.Generator())
    with pytest.raises(ValueError, match="`random_state` is on cpu"):
        GaussianMixture(3, random_state=torch.Generator()).fit(x)
    with pytest.raises(ValueError, match="`generator` is on cpu"):
        segment_images(
            torch.zeros(1, 3, 8, 8, dtype=torch.uint8).cuda(), 2, mode="rgb", n_samples=10, generator=torch.Generator()
        )


class TestDrawsBeyondMultinomial:
    """torch.multinomial refuses more than 2**24 samples; above that the inits draw by
    inverse CDF / Efraimidis-Spirakis keys. The limit is lowered here to reach that path."""

    @pytest.fixture()
    def small_limit(self, monkeypatch):
        import torchgmm.mixture as mixture_module

        monkeypatch.setattr(mixture_module, "_MULTINOMIAL_LIMIT", 4)
        return mixture_module._draw

    @pytest.mark.parametrize("replacement", [True, False])
    def test_draw_frequencies_follow_the_weights(self, small_limit, replacement):
        weights = torch.tensor([[0.0, 1.0, 2.0, 0.0, 5.0, 2.0], [3.0, 0.0, 1.0, 1.0, 0.0, 5.0]])
        gen = torch.Generator().manual_seed(0)
        if replacement:
            draws = small_limit(weights, 200_000, generator=gen)
            freq = torch.stack([torch.bincount(r, minlength=6) for r in draws]).double() / 200_000
            expected = weights.double() / weights.sum(1, keepdim=True)
        else:  # first of two draws without replacement: still proportional to the weights
            draws = torch.stack([small_limit(weights, 2, replacement=False, generator=gen) for _ in range(20_000)])
            assert (draws[..., 0] != draws[..., 1]).all()
            freq = torch.stack([torch.bincount(draws[:, r, 0], minlength=6) for r in range(2)]).double() / 20_000
            expected = weights.double() / weights.sum(1, keepdim=True)
        assert (freq[weights == 0] == 0).all()  # weight 0 is never drawn
        torch.testing.assert_close(freq, expected, rtol=0, atol=0.012)

    @pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "kmeans++"])
    def test_inits_find_separated_blobs(self, small_limit, init_params):
        rng = np.random.default_rng(9)
        centres = np.array([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]])
        x = torch.tensor(np.concatenate([c + rng.normal(0, 1, (200, 2)) for c in centres]))
        gm = GaussianMixture(3, init_params=init_params, random_state=0, tol=1e-6).fit(x)
        found = gm.means_.numpy()[np.argsort(gm.means_.numpy()[:, 0])]
        np.testing.assert_allclose(found, centres[[0, 1, 2]], atol=0.3)

    def test_random_from_data_starts_at_distinct_samples_of_positive_weight(self, small_limit):
        x = torch.arange(40, dtype=torch.float64).view(20, 2)
        weight = torch.zeros(20, dtype=torch.float64)
        weight[[3, 7, 11, 15]] = 1.0
        for seed in range(5):
            gm = GaussianMixture(3, max_iter=0, init_params="random_from_data", random_state=seed)
            means = gm.fit(x, sample_weight=weight).means_
            rows = torch.isclose(means[:, None, :], x[None], rtol=0, atol=1e-9).all(-1).nonzero()[:, 1]
            assert len(set(rows.tolist())) == 3 and set(rows.tolist()) <= {3, 7, 11, 15}


class TestSklearnInits:
    """scikit-learn's init_params names mean scikit-learn's algorithms. Their random draws
    cannot match numpy's, so these test what the algorithms guarantee, and equality with
    scikit-learn wherever a draw does not matter."""

    def test_default_is_sklearns(self):
        assert GaussianMixture().init_params == sklearn_mixture.GaussianMixture().init_params == "kmeans"

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_means_init_alone_equals_sklearn(self, covariance_type):
        # With only means_init, scikit-learn (_initialize) takes the weights and covariances
        # of its "kmeans" partition, each about that cluster's own mean, and pairs cluster k
        # with means_init[k]; KMeans labels its clusters in the order its random seeding
        # found them, so scikit-learn's own fits differ by ~5e-5 between random_states on
        # this data. Given a scikit-learn seed whose KMeans labels the clusters as ours
        # does, every result must agree to rounding.
        x = reviewer_blobs()
        xt, means_init = torch.tensor(x), x[[0, 500, 900]]
        ours = initial_fit(xt, 3, random_state=0).means_.numpy()  # our k-means centres, in our order
        sklearn_cluster = pytest.importorskip("sklearn.cluster")
        seed = next(
            (
                r
                for r in range(20)
                if np.allclose(
                    sklearn_cluster.KMeans(3, n_init=1, random_state=r).fit(x).cluster_centers_,
                    ours,
                    rtol=0,
                    atol=1e-10,
                )
            ),
            None,
        )
        assert seed is not None, "no scikit-learn seed labels the k-means clusters as ours"
        sk = sklearn_mixture.GaussianMixture(
            3, covariance_type=covariance_type, means_init=means_init, tol=1e-6, max_iter=500, random_state=seed
        ).fit(x)
        gm = GaussianMixture(
            3,
            covariance_type=covariance_type,
            means_init=torch.tensor(means_init),
            tol=1e-6,
            max_iter=500,
            random_state=0,
        ).fit(xt)
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
            assert relative_error(getattr(gm, name), getattr(sk, name)) < 1e-10, name
        assert int(gm.n_iter_) == sk.n_iter_ and bool(gm.converged_)
        np.testing.assert_allclose(gm.lower_bounds_.numpy(), sk.lower_bounds_, rtol=1e-10)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_means_init_alone_start_from_the_partition(self, covariance_type):
        # The same procedure in closed form: means = means_init; weights, covariances (+
        # reg_covar) from the k-means partition, about that partition's cluster means.
        x = reviewer_blobs()
        xt, means_init = torch.tensor(x), x[[0, 500, 900]]
        centres = initial_fit(xt, 3, random_state=0).means_.numpy()
        labels = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        gm = initial_fit(xt, 3, covariance_type=covariance_type, means_init=torch.tensor(means_init), random_state=0)
        clusters = [x[labels == k] for k in range(3)]
        reg = 1e-6
        full = np.stack([np.cov(c.T, bias=True) + reg * np.eye(3) for c in clusters])
        expected = {
            "full": full,
            "tied": sum(len(c) * np.cov(c.T, bias=True) for c in clusters) / len(x) + reg * np.eye(3),
            "diag": np.stack([c.var(0) for c in clusters]) + reg,
            "spherical": np.array([c.var(0).mean() for c in clusters]) + reg,
        }[covariance_type]
        np.testing.assert_allclose(gm.means_.numpy(), means_init, rtol=0, atol=1e-14)  # via centred coordinates
        np.testing.assert_allclose(gm.weights_.numpy(), [len(c) / len(x) for c in clusters], rtol=1e-12)
        np.testing.assert_allclose(gm.covariances_.numpy(), expected, rtol=1e-10)

    @pytest.mark.parametrize("seed", range(4))
    def test_kmeans_recovers_separated_clusters(self, seed):
        # Lloyd to convergence: the centres are the blobs' sample means (scikit-learn's
        # KMeans finds the same), whatever the seeding draws; the weights their shares.
        x, truth = separated_blobs(seed)
        gm = initial_fit(torch.tensor(x), 4, random_state=seed)
        blob_means = np.stack([x[truth == k].mean(0) for k in range(4)])
        order = ((gm.means_.numpy()[:, None] - blob_means[None]) ** 2).sum(-1).argmin(1)
        assert sorted(order) == [0, 1, 2, 3]
        np.testing.assert_allclose(gm.means_.numpy(), blob_means[order], rtol=0, atol=1e-12)
        np.testing.assert_allclose(gm.weights_.numpy(), np.bincount(truth)[order] / len(x), rtol=1e-12)
        sk = pytest.importorskip("sklearn.cluster").KMeans(4, n_init=1, random_state=seed).fit(x)
        np.testing.assert_allclose(np.sort(gm.means_.numpy(), 0), np.sort(sk.cluster_centers_, 0), rtol=0, atol=1e-12)

    def test_kmeans_weighted_batched_equals_repeated_rows(self):
        # Weight c on a row = c repeated rows, for every problem of a batch.
        x, _ = separated_blobs(7)
        counts = np.random.default_rng(8).integers(0, 5, size=(3, len(x)))
        weighted = GaussianMixture(4, max_iter=0, random_state=0, covariance_type="diag")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            weighted.fit(torch.tensor(np.stack([x] * 3)), sample_weight=torch.tensor(counts, dtype=torch.float64))
        for i in range(3):
            alone = initial_fit(
                torch.tensor(np.repeat(x, counts[i], axis=0)), 4, random_state=i, covariance_type="diag"
            )
            mine, theirs = np.lexsort(weighted.means_[i].numpy().T), np.lexsort(alone.means_.numpy().T)
            for name in ("means_", "weights_", "covariances_"):
                np.testing.assert_allclose(
                    getattr(weighted, name)[i].numpy()[mine],
                    getattr(alone, name).numpy()[theirs],
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=name,
                )

    @pytest.mark.parametrize("init_params", ["k-means++", "random_from_data"])
    def test_one_sample_per_component(self, init_params):
        # As scikit-learn's: component k starts as one sample, covariance reg_covar, and
        # (torchgmm) weight 1/K; scikit-learn's own start has the same covariances.
        x, _ = separated_blobs(9)
        gm = initial_fit(torch.tensor(x), 4, init_params=init_params, random_state=0)
        sk = sklearn_mixture.GaussianMixture(4, init_params=init_params, max_iter=0, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk.fit(x)
        rows = rows_of(x, gm.means_)  # each mean is a row of x
        assert len(set(rows)) == 4
        # E[xx'] - mu mu' of one sample is 0 up to rounding of x^2 ~ 400 (module docstring).
        np.testing.assert_allclose(gm.covariances_.numpy(), sk.covariances_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(gm.covariances_.numpy(), np.stack([1e-6 * np.eye(2)] * 4), rtol=0, atol=1e-12)
        np.testing.assert_allclose(gm.weights_.numpy(), np.full(4, 0.25), rtol=1e-14)
        # With weights: a seed still counts as one row, and weight-0 rows are never drawn.
        w = np.random.default_rng(10).integers(0, 3, len(x)).astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for seed in range(10):
                gw = GaussianMixture(4, init_params=init_params, max_iter=0, random_state=seed).fit(
                    torch.tensor(x), sample_weight=torch.tensor(w)
                )
                rows = rows_of(x, gw.means_)
                assert (w[rows] > 0).all()
                np.testing.assert_allclose(gw.weights_.numpy(), np.full(4, 0.25), rtol=1e-14)

    def test_kmeans_plusplus_spreads_the_seeds(self):
        # scikit-learn's greedy k-means++ (2 + log K candidates per seed) puts one seed in
        # each of K far-apart blobs; uniform draws (random_from_data) often do not.
        x, truth = separated_blobs(11, sizes=(200, 200, 200, 200), spacing=1000.0)
        blobs_hit = {}
        for init_params in ("k-means++", "random_from_data"):
            hits = []
            for seed in range(20):
                gm = initial_fit(torch.tensor(x), 4, init_params=init_params, random_state=seed)
                rows = rows_of(x, gm.means_)
                hits.append(len(set(truth[rows])))
            blobs_hit[init_params] = hits
        assert blobs_hit["k-means++"] == [4] * 20
        assert min(blobs_hit["random_from_data"]) < 4

    def test_random_from_data_needs_k_positive_weights(self):
        w = torch.zeros(20, dtype=torch.float64)
        w[:2] = 1
        with pytest.raises(ValueError, match="draws n_components=3 distinct samples.*problems \\[0\\]"):
            GaussianMixture(3, init_params="random_from_data").fit(
                torch.randn(20, 2, dtype=torch.float64), sample_weight=w
            )


class TestDegenerateData:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_constant_data_no_nan(self, covariance_type, dtype):
        x = torch.full((50, 2), 7.0, dtype=dtype)
        fit = fit_gaussian_mixture(x, 3, covariance_type=covariance_type, init_params="range", max_iter=10)
        for value in fit[:5]:
            assert torch.isfinite(value).all()
        torch.testing.assert_close(fit.means[0, fit.weights[0].argmax()], torch.full((2,), 7.0, dtype=dtype))

    def test_more_components_than_distinct_values(self):
        x = torch.tensor([0.0, 0.0, 200.0, 200.0, 200.0, 255.0] * 10)[:, None]
        for init in ["kmeans", "k-means++", "random", "random_from_data", "range", "kmeans++"]:
            fit = fit_gaussian_mixture(x, 5, init_params=init, max_iter=50, generator=torch.Generator().manual_seed(0))
            for value in fit[:5]:
                assert torch.isfinite(value).all(), init


class TestModule:
    def test_fit_keeps_no_autograd_graph(self):
        x = torch.tensor(three_blobs(8))
        plain = GaussianMixture(3, random_state=0).fit(x)
        tracked = GaussianMixture(3, random_state=0).fit(x.clone().requires_grad_(True))
        assert all(getattr(tracked, n).grad_fn is None for n in ("weights_", "means_", "covariances_"))
        torch.testing.assert_close(tracked.means_, plain.means_, rtol=0, atol=0)
        copy.deepcopy(tracked)  # graph nodes cannot be deep-copied

    def test_state_dict_round_trip_into_fresh_module(self):
        x = torch.tensor(three_blobs(8))
        gm = GaussianMixture(3, random_state=0).fit(x)
        fresh = GaussianMixture(3)
        fresh.load_state_dict(gm.state_dict())
        torch.testing.assert_close(fresh.predict_proba(x), gm.predict_proba(x), rtol=0, atol=0)

    def test_load_state_dict_refuses_other_k_or_covariance_type(self):
        x = torch.tensor(three_blobs(18))
        state = GaussianMixture(2, random_state=0).fit(x).state_dict()
        other_k = GaussianMixture(3)
        with pytest.raises(RuntimeError, match="size mismatch for means_.*n_components=2.*n_components=3"):
            other_k.load_state_dict(state)
        assert not other_k.is_fitted  # left as it was
        with pytest.raises(RuntimeError, match="covariance_type='diag'.*fits covariance_type='full'"):
            GaussianMixture(2, covariance_type="diag").load_state_dict(state, strict=False)
        batched = GaussianMixture(2, covariance_type="tied", init_params="range").fit(torch.stack([x, x]))
        fresh = GaussianMixture(2, covariance_type="tied")
        fresh.load_state_dict(batched.state_dict())
        assert torch.equal(fresh.predict(torch.stack([x, x])), batched.predict(torch.stack([x, x])))
        GaussianMixture(2).load_state_dict(GaussianMixture(5).state_dict())  # unfitted: any K

    def test_deepcopy_and_to(self):
        x = torch.tensor(three_blobs(9)).float()
        gm = GaussianMixture(3, random_state=0).fit(x)
        other = copy.deepcopy(gm).to(torch.float64)
        assert other.means_.dtype == torch.float64
        torch.testing.assert_close(other(x.double()).float(), gm(x), atol=1e-4, rtol=1e-4)

    def test_forward_is_predict_proba_and_sums_to_one(self):
        x = torch.tensor(three_blobs(10))
        gm = GaussianMixture(3, random_state=0).fit(x)
        resp = gm(x)
        torch.testing.assert_close(resp.sum(-1), torch.ones(len(x), dtype=torch.float64))
        assert torch.equal(resp.argmax(-1), gm.predict(x))

    def test_batched_module(self):
        x = torch.tensor(np.stack([three_blobs(11), three_blobs(12)]))
        gm = GaussianMixture(3, init_params="range").fit(x)
        assert gm.means_.shape == (2, 3, 3) and gm.n_iter_.shape == (2,)
        assert gm.predict(x).shape == (2, 600)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_sample_moments(self, covariance_type):
        x = torch.tensor(three_blobs(13))
        gm = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(x)
        samples, labels = gm.sample(40000, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (40000, 3) and labels.shape == (40000,)
        for k in range(2):
            torch.testing.assert_close(samples[labels == k].mean(0), gm.means_[k], atol=0.1, rtol=0)
        counts = torch.bincount(labels, minlength=2).double() / 40000
        torch.testing.assert_close(counts, gm.weights_, atol=0.01, rtol=0)

    def test_convergence_warning(self):
        with pytest.warns(ConvergenceWarning):
            GaussianMixture(3, max_iter=1, tol=0, random_state=0).fit(torch.tensor(three_blobs(14)))


class TestDtypes:
    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_is_fitted_in_float32(self, half):
        x = torch.tensor(three_blobs(16)).to(half)
        gm = GaussianMixture(3, random_state=0).fit(x)
        upcast = GaussianMixture(3, random_state=0).fit(x.float())
        assert gm.means_.dtype == torch.float32
        torch.testing.assert_close(gm.means_, upcast.means_, rtol=0, atol=0)
        torch.testing.assert_close(gm.predict_proba(x), upcast.predict_proba(x.float()), rtol=0, atol=0)
        fit = fit_gaussian_mixture(x, 3, init_params="range")
        assert fit.covariances.dtype == torch.float32 and torch.isfinite(fit.covariances).all()

    def test_complex_is_refused(self):
        x = torch.randn(20, 2, dtype=torch.complex64)
        with pytest.raises(TypeError, match="`x` must be real"):
            GaussianMixture(2).fit(x)
        gm = GaussianMixture(2, random_state=0).fit(torch.randn(20, 2))
        with pytest.raises(TypeError, match="`x` must be real"):
            gm.predict(x)

    def test_integer_dtype_argument_is_refused(self):
        with pytest.raises(TypeError, match="`dtype` must be one of"):
            GaussianMixture(2, dtype=torch.int64).fit(torch.randn(20, 2))


class TestBadInput:
    def test_errors_name_the_argument(self):
        x = torch.randn(20, 2)
        with pytest.raises(ShapeError, match="`x` must have shape"):
            fit_gaussian_mixture(torch.randn(20), 2)
        with pytest.raises(ValueError, match="fewer than n_components"):
            fit_gaussian_mixture(torch.randn(2, 2), 3)
        bad = x.clone()
        bad[3, 1] = float("nan")
        with pytest.raises(ValueError, match="`x` contains 1 NaN"):
            fit_gaussian_mixture(bad, 2)
        with pytest.raises(ValueError, match="`sample_weight` must be non-negative"):
            fit_gaussian_mixture(x, 2, sample_weight=-torch.ones(20))
        with pytest.raises(ValueError, match="sums to zero"):
            fit_gaussian_mixture(x, 2, sample_weight=torch.zeros(20))
        with pytest.raises(ShapeError, match="`sample_weight` must have shape"):
            fit_gaussian_mixture(x, 2, sample_weight=torch.ones(19))
        with pytest.raises(ValueError, match="`covariance_type` must be one of"):
            fit_gaussian_mixture(x, 2, covariance_type="banana")
        with pytest.raises(ValueError, match="`n_components` must be >= 1"):
            fit_gaussian_mixture(x, 0)
        with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
            fit_gaussian_mixture(np.zeros((20, 2)), 2)
        with pytest.raises(ShapeError, match="`means_init` must have shape"):
            fit_gaussian_mixture(x, 2, means_init=torch.zeros(3, 2))
        with pytest.raises(ValueError, match="`weights_init` must sum to 1"):
            fit_gaussian_mixture(x, 2, weights_init=torch.zeros(2))
        with pytest.raises(ValueError, match="`weights_init` must be non-negative"):
            fit_gaussian_mixture(x, 2, weights_init=torch.tensor([1.5, -0.5]))
        with pytest.raises(ValueError, match="`means_init` contains 1 NaN"):
            fit_gaussian_mixture(x, 2, means_init=torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))

    def test_float32_overflow_is_a_clear_error(self):
        # x * 1e20 squared is 1e40 > float32's max: k-means++ used to fail inside
        # torch.multinomial ("probability tensor contains either inf, nan or element < 0").
        x = torch.tensor(three_blobs(17), dtype=torch.float32)
        with pytest.raises(ValueError, match="`x` is too spread out to fit in torch.float32.*float64"):
            GaussianMixture(2, random_state=0).fit(x * 1e20)
        assert torch.isfinite(GaussianMixture(2, random_state=0).fit(x.double() * 1e20).means_).all()
        # Far from the origin is fine: the check is on the centred data.
        assert torch.isfinite(GaussianMixture(2, random_state=0).fit(x * 1e15 + 1e20).means_).all()

    def test_weights_init_must_be_normalised(self):
        x = torch.randn(20, 2)
        with pytest.raises(ValueError, match="`weights_init` must sum to 1 .* got a sum of 10"):
            fit_gaussian_mixture(x, 2, weights_init=torch.tensor([5.0, 5.0]))
        with pytest.raises(ShapeError, match="`weights_init` must have shape"):
            fit_gaussian_mixture(x, 2, weights_init=torch.tensor([0.2, 0.3, 0.5]))
        # float32 rounding of a normalised vector is accepted.
        fit_gaussian_mixture(x, 3, weights_init=torch.softmax(torch.randn(3), 0), max_iter=1)

    @pytest.mark.parametrize(
        "covariance_type, precisions",
        [
            ("diag", torch.zeros(2, 2)),  # used to fit to all-NaN means and weights
            ("spherical", torch.tensor([1.0, -1.0])),
            ("full", -torch.eye(2).expand(2, 2, 2)),  # used to raise a raw _LinAlgError
            ("tied", torch.tensor([[1.0, 2.0], [2.0, 1.0]])),  # indefinite
            ("full", torch.tensor([[1.0, 0.5], [0.0, 1.0]]).expand(2, 2, 2)),  # asymmetric
        ],
    )
    def test_precisions_init_must_be_positive(self, covariance_type, precisions):
        with pytest.raises(ValueError, match="`precisions_init` must be .*positive"):
            GaussianMixture(2, covariance_type=covariance_type, precisions_init=precisions).fit(torch.randn(20, 2))

    def test_e_step_overflow_is_a_clear_error(self):
        # A tight cluster 1e17 from another: its squared Mahalanobis distances overflow
        # float32 inside EM; diag and spherical used to return all-NaN parameters silently.
        g = torch.Generator().manual_seed(0)
        x = torch.cat([torch.randn(20, 2, generator=g), torch.randn(20, 2, generator=g) * 1e-3 + 1e17])
        with pytest.raises(ValueError, match="failed in the E-step.*overflowed torch.float32"):
            fit_gaussian_mixture(x, 2, covariance_type="diag", init_params="range")

    def test_far_points_at_predict(self):
        gm = GaussianMixture(2, random_state=0).fit(torch.randn(100, 2))
        # float32 cannot hold log N(1e20 | ...) ~ -1e40: a clear error, not silent NaN.
        with pytest.raises(ValueError, match="overflowed torch.float32.*float64"):
            gm.score_samples(torch.full((2, 2), 1e20))
        ll = gm.to(torch.float64).score_samples(torch.full((2, 2), 1e20, dtype=torch.float64))
        assert torch.isfinite(ll).all() and (ll < -1e39).all()
        # Far but representable: responsibilities still sum to 1 (they were all 1 before).
        resp = GaussianMixture(3, random_state=0).fit(torch.full((50, 2), 3.0)).predict_proba(torch.full((5, 2), 1e6))
        torch.testing.assert_close(resp.sum(-1), torch.ones(5))

    def test_zero_features_names_x(self):
        with pytest.raises(ShapeError, match="`x` must have at least one feature"):
            fit_gaussian_mixture(torch.randn(20, 0), 2)

    @pytest.mark.parametrize("name", ["tol", "reg_covar"])
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
    def test_non_finite_or_negative_settings(self, name, value):
        # NaN compares false with everything, so `tol < 0` let it through (then EM never
        # converged); NaN/inf reg_covar surfaced as an "ill-defined covariance" error.
        with pytest.raises(ValueError, match=f"`{name}` must be a finite number >= 0"):
            GaussianMixture(2, **{name: value}).fit(torch.randn(20, 2))
        with pytest.raises(TypeError, match=f"`{name}` must be a real number"):
            fit_gaussian_mixture(torch.randn(20, 2), 2, **{name: "0.1"})

    def test_unfitted_and_mismatched(self):
        with pytest.raises(RuntimeError, match="not fitted"):
            GaussianMixture(2).predict(torch.randn(5, 2))
        gm = GaussianMixture(2, random_state=0).fit(torch.randn(50, 2))
        with pytest.raises(ShapeError, match="D=3"):
            gm.predict(torch.randn(5, 3))
        nan = torch.tensor([[float("nan"), 0.0]])
        for method in (gm.predict, gm.predict_proba, gm.score, gm.score_samples):  # scikit-learn refuses too
            with pytest.raises(ValueError, match=r"`x` contains 1 NaN .* before prediction\.$"):
                method(nan)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_device_matches_cpu(device, covariance_type):
    x = torch.tensor(three_blobs(15))
    kw = dict(covariance_type=covariance_type, init_params="range", tol=0, max_iter=20)
    cpu = fit_gaussian_mixture(x, 3, **kw)
    other = fit_gaussian_mixture(x.to(device), 3, **kw)
    assert other.means.device.type == device.type
    for a, b in zip(other[:5], cpu[:5]):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-7, atol=1e-9)


class TestOnDevice:
    """The newer GaussianMixture attributes, weighted criteria, inits and per-problem
    generators on every device (CUDA when there is one)."""

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_attributes_and_weighted_criteria_equal_the_cpu(self, device, covariance_type):
        x, counts, repeated = TestWeightedCriteria.weighted_data(30)
        init = dict(
            weights_init=torch.tensor([0.2, 0.3, 0.5]),
            means_init=torch.tensor(x[[5, 350, 550]]),
            precisions_init=torch.tensor(identity_precisions(covariance_type, 3, 3)),
        )
        xt, w = torch.tensor(x), torch.tensor(counts, dtype=torch.float64)
        options = dict(covariance_type=covariance_type, tol=1e-6, max_iter=200, **init)
        cpu = GaussianMixture(3, **options).fit(xt, sample_weight=w)
        # data and weights on the CPU, the fit on the device (moved there by the module)
        gm = GaussianMixture(3, device=device, **options).fit(xt, sample_weight=w)
        assert gm.means_.device.type == device.type and bool(gm.converged_)
        assert int(gm.n_iter_) == int(cpu.n_iter_) and gm.lower_bounds_.shape == (int(cpu.n_iter_),)
        for name in (
            "weights_",
            "means_",
            "covariances_",
            "precisions_cholesky_",
            "precisions_",
            "lower_bound_",
            "lower_bounds_",
        ):
            torch.testing.assert_close(getattr(gm, name).cpu(), getattr(cpu, name), rtol=1e-7, atol=1e-9, msg=name)
        xd, wd, rep = xt.to(device), w.to(device), torch.tensor(repeated, device=device)
        for name in ("score", "bic", "aic"):
            got = getattr(gm, name)(xd, wd)
            assert got.device.type == device.type
            torch.testing.assert_close(got.cpu(), getattr(cpu, name)(xt, w), rtol=1e-7, atol=0, msg=name)
            # the independent reference: weight c on a row is the row repeated c times
            torch.testing.assert_close(got, getattr(gm, name)(rep), rtol=1e-10, atol=0, msg=name)
            torch.testing.assert_close(getattr(gm, name)(xt, w).cpu(), got.cpu(), msg=name)  # CPU weights moved

    @pytest.mark.parametrize("init_params", ["kmeans", "kmeans++", "k-means++", "random_from_data", "random"])
    def test_device_generators_give_each_problem_its_alone_fit(self, device, init_params):
        x = torch.tensor(np.stack([separated_blobs(s)[0] for s in range(3)]), device=device)
        seeds = (11, 12, 13)
        batched = fit_gaussian_mixture(
            x,
            4,
            init_params=init_params,
            max_iter=30,
            generator=[torch.Generator(device=device).manual_seed(s) for s in seeds],
        )
        assert batched.means.device.type == device.type
        for i, seed in enumerate(seeds):
            alone = fit_gaussian_mixture(
                x[i : i + 1],
                4,
                init_params=init_params,
                max_iter=30,
                generator=torch.Generator(device=device).manual_seed(seed),
            )
            torch.testing.assert_close(batched.means[i], alone.means[0], rtol=1e-9, atol=1e-9)
            assert int(batched.n_iter[i]) == int(alone.n_iter[0])

    def test_kmeans_module_recovers_separated_clusters(self, device):
        # the default init with an int random_state: the module seeds a generator on the
        # data's device; Lloyd to convergence ends at the blobs' sample means, whatever the draws
        x, truth = separated_blobs(2)
        gm = initial_fit(torch.tensor(x, device=device), 4, random_state=0)
        assert gm.means_.device.type == device.type
        blob_means = np.stack([x[truth == k].mean(0) for k in range(4)])
        means = gm.means_.cpu().numpy()
        order = ((means[:, None] - blob_means[None]) ** 2).sum(-1).argmin(1)
        assert sorted(order) == [0, 1, 2, 3]
        np.testing.assert_allclose(means, blob_means[order], rtol=0, atol=1e-9)
        np.testing.assert_allclose(gm.weights_.cpu().numpy(), np.bincount(truth)[order] / len(x), rtol=1e-12)

    @pytest.mark.parametrize("replacement", [True, False])
    def test_draws_beyond_multinomial_on_device(self, device, replacement, monkeypatch):
        # the inverse-CDF and Efraimidis-Spirakis draws (above 2**24 samples; the limit is
        # lowered here), with device generators: frequencies follow the weights, weight 0 is
        # never drawn, and B generators draw each row as that row alone
        import torchgmm.mixture as mixture_module

        monkeypatch.setattr(mixture_module, "_MULTINOMIAL_LIMIT", 4)
        weights = torch.tensor([[0.0, 1.0, 2.0, 0.0, 5.0, 2.0], [3.0, 0.0, 1.0, 1.0, 0.0, 5.0]], device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        if replacement:
            draws = mixture_module._draw(weights, 100_000, generator=gen)
        else:  # the first of two draws of 50,000 copies of each row
            rows = weights.repeat_interleave(50_000, 0)
            draws = mixture_module._draw(rows, 2, replacement=False, generator=gen).view(2, 50_000, 2)
            assert (draws[..., 0] != draws[..., 1]).all()
            draws = draws[..., 0]
        assert draws.device.type == device.type
        freq = torch.stack([torch.bincount(r, minlength=6) for r in draws.cpu()]).double() / draws.shape[1]
        expected = weights.cpu().double() / weights.cpu().sum(1, keepdim=True)
        assert (freq[expected == 0] == 0).all()
        torch.testing.assert_close(freq, expected, rtol=0, atol=0.012)
        generators = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
        both = mixture_module._draw(weights, 3, replacement=replacement, generator=generators)
        for i, seed in enumerate((1, 2)):
            alone = mixture_module._draw(
                weights[i : i + 1],
                3,
                replacement=replacement,
                generator=torch.Generator(device=device).manual_seed(seed),
            )
            assert torch.equal(both[i], alone[0])
