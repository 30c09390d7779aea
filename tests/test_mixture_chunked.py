"""EM over chunked sources equals the in-memory fit of the concatenated chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchgmm._checks import ShapeError
from torchgmm.mixture import (
    COVARIANCE_TYPES,
    GaussianMixture,
    _e_step_statistics,
    _log_prob_coefficients,
    _quadratic_features,
    fit_gaussian_mixture,
)

FIELDS = ("weights", "means", "covariances", "precisions_cholesky", "lower_bound")
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def blobs(n: int = 1500, d: int = 3, b: int | None = None, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if b is None else (b, n, d)
    centres = torch.tensor([[4.0] * d, [-3.0] * d, [0.0] * (d - 1) + [6.0]], dtype=torch.float64)
    labels = torch.randint(0, 3, shape[:-1], generator=g)
    x = centres[labels] + torch.randn(shape, generator=g, dtype=torch.float64) * (1 + labels.unsqueeze(-1))
    return (x + 100.0).to(dtype)  # an offset: the chunked fit must centre as the in-memory one


def identity_precisions(covariance_type: str, k: int, d: int, dtype) -> torch.Tensor:
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
    if covariance_type in ("full", "tied"):
        return torch.eye(d, dtype=dtype).expand(shape).clone()
    return torch.ones(shape, dtype=dtype)


def split(x: torch.Tensor, w: torch.Tensor | None, size: int) -> list:
    """Chunks along N of (N, D) or (B, N, D) data, with (x, w) pairs when weighted."""
    n = x.shape[-2]
    out = []
    for i in range(0, n, size):
        xi = x[..., i : i + size, :]
        out.append(xi if w is None else (xi, w[..., i : i + size]))
    return out


def assert_same_fit(got, want, dtype, rtol=None):
    rtol = RTOL[dtype] if rtol is None else rtol
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        scale = float(b.abs().max())
        err = float((a - b).abs().max()) / scale
        assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol}"
    assert torch.equal(got.n_iter, want.n_iter)
    # the first bound of a one-sample init (covariance reg_covar) is ~-1e6: its rounding
    # differs at 1e-9 relative, as the centring mean's last bits do
    torch.testing.assert_close(got.lower_bounds[:, :1], want.lower_bounds[:, :1], rtol=100 * rtol, atol=0)
    torch.testing.assert_close(got.lower_bounds[:, 1:], want.lower_bounds[:, 1:], rtol=rtol, atol=0, equal_nan=True)


class TestChunkedEqualsInMemory:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_explicit_init(self, covariance_type, weighted, dtype):
        x = blobs(dtype=dtype)
        w = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1), dtype=dtype) if weighted else None
        init = dict(
            weights_init=torch.tensor([0.2, 0.3, 0.5], dtype=dtype),
            means_init=x[[0, 1, 2]],
            precisions_init=identity_precisions(covariance_type, 3, 3, dtype),
            max_iter=30,
            tol=0,
        )
        want = fit_gaussian_mixture(x, 3, sample_weight=w, covariance_type=covariance_type, **init)
        got = fit_gaussian_mixture(split(x, w, 400), 3, covariance_type=covariance_type, **init)
        assert_same_fit(got, want, dtype)

    @pytest.mark.parametrize("init_params", ["range", "kmeans", "kmeans++", "k-means++", "random_from_data"])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_inits_equal_in_memory(self, init_params, weighted):
        # N <= INIT_SAMPLE_SIZE: the sample is all data, so the same generator gives the same init
        x = blobs(d=2)
        w = (
            torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1), dtype=x.dtype) + 0.5
            if weighted
            else None
        )
        kw = dict(init_params=init_params, tol=1e-8, max_iter=40)
        want = fit_gaussian_mixture(x, 3, sample_weight=w, generator=torch.Generator().manual_seed(3), **kw)
        got = fit_gaussian_mixture(split(x, w, 333), 3, generator=torch.Generator().manual_seed(3), **kw)
        assert_same_fit(got, want, torch.float64)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_batched_with_weights(self, covariance_type):
        x = blobs(n=600, d=2, b=3)
        w = torch.rand(3, 600, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
        kw = dict(covariance_type=covariance_type, init_params="range", tol=1e-6, max_iter=60)
        want = fit_gaussian_mixture(x, 3, sample_weight=w, **kw)
        got = fit_gaussian_mixture(split(x, w, 250), 3, **kw)
        assert_same_fit(got, want, torch.float64)
        assert got.means.shape == (3, 3, 2)

    @pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
    def test_sklearn_parity_through_chunks(self):
        from sklearn.mixture import GaussianMixture as SkGM

        x = blobs(d=2)
        means0 = x[[0, 1, 2]].numpy()
        sk = SkGM(3, means_init=means0, tol=0, max_iter=25).fit(x.numpy())  # a starting point
        # from scikit-learn's own fit, continued by both: torchgmm through chunks
        sk_full = SkGM(
            3, weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_, tol=0, max_iter=10
        ).fit(x.numpy())
        got = fit_gaussian_mixture(
            split(x, None, 500),
            3,
            weights_init=torch.from_numpy(sk.weights_),
            means_init=torch.from_numpy(sk.means_),
            precisions_init=torch.from_numpy(sk.precisions_),
            tol=0,
            max_iter=10,
        )
        np.testing.assert_allclose(got.means[0].numpy(), sk_full.means_, rtol=1e-10)
        np.testing.assert_allclose(got.covariances[0].numpy(), sk_full.covariances_, rtol=1e-10)
        np.testing.assert_allclose(float(got.lower_bound[0]), sk_full.lower_bound_, rtol=1e-12)


class TestSources:
    def test_dataloader_generator_factory_and_module(self):
        x = blobs(d=2)
        w = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        kw = dict(n_components=3, init_params="range", tol=1e-8, max_iter=50)
        want = GaussianMixture(**kw).fit(x, w)
        loader = DataLoader(TensorDataset(x, w), batch_size=256)
        by_loader = GaussianMixture(**kw).fit(loader)
        by_factory = GaussianMixture(**kw).fit(
            lambda: ((x[i : i + 100], w[i : i + 100]) for i in range(0, len(x), 100))
        )
        for got in (by_loader, by_factory):
            assert got.means_.shape == (3, 2)  # (N_i, D) chunks: scikit-learn's shapes
            torch.testing.assert_close(got.means_, want.means_, rtol=1e-10, atol=0)
            torch.testing.assert_close(got.covariances_, want.covariances_, rtol=1e-10, atol=0)
            assert int(got.n_iter_) == int(want.n_iter_)
            torch.testing.assert_close(got.lower_bounds_, want.lower_bounds_, rtol=1e-10, atol=0)

    def test_fused_tiles_equal_one_matmul(self, monkeypatch):
        # the tiled E-step statistics equal the untiled ones
        import torchgmm.mixture as m

        x = blobs(n=5000, d=2).unsqueeze(0) - 100
        w = torch.rand(1, 5000, dtype=x.dtype)
        features = _quadratic_features(x, "full")
        means = x[:, :3]
        prec = torch.eye(2, dtype=x.dtype).expand(1, 3, 2, 2)
        coefficients, constant = _log_prob_coefficients(means, prec, "full")
        whole = _e_step_statistics(features, w, coefficients, constant)
        monkeypatch.setattr(m, "_TILE_NUMBERS", 1)  # tiles of 1024 samples
        tiled = _e_step_statistics(features, w, coefficients, constant)
        for a, b in zip(tiled, whole):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        # and both equal the textbook formulas
        log_prob = constant.unsqueeze(-1) + coefficients @ features
        resp = torch.softmax(log_prob, 1) * w.unsqueeze(1)
        torch.testing.assert_close(whole.nk, resp.sum(-1), rtol=1e-12, atol=0)
        torch.testing.assert_close(whole.log_likelihood, (torch.logsumexp(log_prob, 1) * w).sum(1), rtol=1e-12, atol=0)

    @pytest.mark.filterwarnings("ignore::torchgmm.mixture.ConvergenceWarning")
    def test_chunks_on_cpu_fit_in_float32(self):
        x = blobs(d=2)
        got = GaussianMixture(3, init_params="range", dtype=torch.float32, tol=0, max_iter=20).fit(split(x, None, 500))
        want = GaussianMixture(3, init_params="range", dtype=torch.float32, tol=0, max_iter=20).fit(x)
        assert got.means_.dtype == torch.float32
        torch.testing.assert_close(got.means_, want.means_, rtol=1e-5, atol=1e-5)

    @pytest.mark.cuda
    def test_cpu_chunks_fitted_on_cuda(self):
        x = blobs(d=2)
        got = GaussianMixture(3, init_params="range", device="cuda", tol=0, max_iter=20).fit(split(x, None, 500))
        want = GaussianMixture(3, init_params="range", tol=0, max_iter=20).fit(x)
        assert got.means_.device.type == "cuda"
        torch.testing.assert_close(got.means_.cpu(), want.means_, rtol=1e-10, atol=1e-10)

    def test_large_n_kmeans_init_samples_and_recovers_blobs(self, monkeypatch):
        import torchgmm.mixture_chunked as mc

        monkeypatch.setattr(mc, "INIT_SAMPLE_SIZE", 500)  # 1500 samples: a third is sampled
        x = blobs(d=2)
        got = fit_gaussian_mixture(split(x, None, 400), 3, generator=torch.Generator().manual_seed(0))
        centres = torch.tensor([[104.0, 104.0], [97.0, 97.0], [100.0, 106.0]], dtype=x.dtype)
        found = got.means[0][torch.cdist(centres, got.means[0]).argmin(1)]
        torch.testing.assert_close(found, centres, rtol=0, atol=0.5)


class TestBadChunks:
    def test_different_d_names_the_chunk(self):
        with pytest.raises(ShapeError, match="chunk 1 of `x` has shape \\(10, 3\\)"):
            fit_gaussian_mixture([torch.randn(10, 2), torch.randn(10, 3)], 2)

    def test_empty_chunk_names_the_chunk(self):
        with pytest.raises(ShapeError, match="chunk 2 of `x` is empty"):
            fit_gaussian_mixture([torch.randn(10, 2), torch.randn(10, 2), torch.randn(0, 2)], 2)

    def test_nan_names_the_chunk(self):
        bad = torch.randn(10, 2)
        bad[3, 1] = float("nan")
        with pytest.raises(ValueError, match="chunk 2 of `x` holds NaN or inf"):
            fit_gaussian_mixture([torch.randn(10, 2), torch.randn(10, 2), bad, torch.randn(10, 2)], 2)

    def test_negative_weight_names_the_chunk(self):
        w = torch.ones(10)
        w[0] = -1
        with pytest.raises(ValueError, match="sample weights of chunk 1 hold NaN, inf or negative"):
            fit_gaussian_mixture([(torch.randn(10, 2), torch.ones(10)), (torch.randn(10, 2), w)], 2)

    def test_mixed_weighting_and_bad_items(self):
        with pytest.raises(ValueError, match="chunk 1 of `x` has no sample weights"):
            fit_gaussian_mixture([(torch.randn(10, 2), torch.ones(10)), torch.randn(10, 2)], 2)
        with pytest.raises(TypeError, match="chunk 0 of `x` must be a tensor"):
            fit_gaussian_mixture([[[1.0, 2.0]]], 1)
        with pytest.raises(TypeError, match="sample_weight` cannot be given with chunked"):
            fit_gaussian_mixture([torch.randn(10, 2)], 2, sample_weight=torch.ones(10))

    def test_one_shot_iterator_and_changing_source(self):
        with pytest.raises(TypeError, match="one-shot iterator"):
            fit_gaussian_mixture(iter([torch.randn(10, 2)]), 2)
        calls = []

        def shrinking():
            calls.append(1)
            return iter([torch.randn(20 - len(calls), 2, generator=torch.Generator().manual_seed(0))])

        with pytest.raises(ValueError, match="same data on every pass"):
            fit_gaussian_mixture(shrinking, 2, init_params="range")

    def test_no_chunks_and_too_few_samples(self):
        with pytest.raises(ValueError, match="yielded no chunks"):
            fit_gaussian_mixture([], 2)
        with pytest.raises(ValueError, match="N=3 samples per problem, fewer than n_components=4"):
            fit_gaussian_mixture([torch.randn(2, 2), torch.randn(1, 2)], 4)


def test_unrolled_statistics_equal_the_matmul_ones():
    # the sample-wise form the roofline benchmark compiles computes the same statistics
    from torchgmm.mixture import _unrolled_statistics

    x = blobs(n=3000, d=2).unsqueeze(0) - 100
    w = torch.rand(1, 3000, dtype=x.dtype)
    features = _quadratic_features(x, "full")
    coefficients, constant = _log_prob_coefficients(x[:, :4], torch.eye(2, dtype=x.dtype).expand(1, 4, 2, 2), "full")
    for weights in (None, w):
        want = _e_step_statistics(features, weights, coefficients, constant)
        got = _unrolled_statistics(features, weights, coefficients, constant)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


class TestStepwise:
    @staticmethod
    def stream(n_chunks: int, size: int = 1000, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        centres = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
        scales = torch.tensor([1.0, 0.5, 1.5], dtype=torch.float64)
        out = []
        for _ in range(n_chunks):
            labels = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), size, replacement=True, generator=g)
            out.append(centres[labels] + torch.randn(size, 2, generator=g, dtype=torch.float64) * scales[labels, None])
        return out

    @staticmethod
    def error(fit, want) -> float:
        order = torch.cdist(want.means[0], fit.means[0]).argmin(1)
        return max(
            float((fit.means[0][order] - want.means[0]).abs().max()),
            float((fit.weights[0][order] - want.weights[0]).abs().max()),
            float((fit.covariances[0][order] - want.covariances[0]).abs().max()),
        )

    @pytest.mark.parametrize("exponent, final", [(0.6, 0.06), (1.0, 0.01)])
    def test_converges_to_the_batch_fit(self, exponent, final):
        from torchgmm.mixture_chunked import fit_gaussian_mixture_stepwise

        chunks = self.stream(200)
        batch = fit_gaussian_mixture(torch.cat(chunks), 3, init_params="range", tol=1e-10, max_iter=500)
        errors = []
        for n_chunks in (5, 20, 200):
            fit = fit_gaussian_mixture_stepwise(
                iter(chunks[:n_chunks]),
                3,
                init_params="kmeans",
                step_exponent=exponent,
                generator=torch.Generator().manual_seed(0),
            )
            errors.append(self.error(fit, batch))
        # 200,000 samples seen once: near the batch fit (measured 0.047 and 0.003), and
        # nearer with every chunk (measured 0.18, 0.11, 0.05 and 0.15, 0.08, 0.003)
        assert errors[2] < final, errors
        assert errors[0] > errors[1] > errors[2], errors
        assert fit.lower_bounds.shape == (1, 199) and int(fit.n_iter[0]) == 199

    def test_weighted_chunks_equal_repeated_rows_at_the_first_step(self):
        from torchgmm.mixture_chunked import fit_gaussian_mixture_stepwise

        chunks = self.stream(2, size=300)
        w = torch.ones(300, dtype=torch.float64)
        w[:50] = 2.0
        repeated = [torch.cat([c, c[:50]]) for c in chunks]
        got = fit_gaussian_mixture_stepwise([(c, w) for c in chunks], 3, init_params="range")
        want = fit_gaussian_mixture_stepwise(repeated, 3, init_params="range")
        torch.testing.assert_close(got.means, want.means, rtol=1e-10, atol=1e-12)

    def test_bad_arguments(self):
        from torchgmm.mixture_chunked import fit_gaussian_mixture_stepwise

        with pytest.raises(ValueError, match="`step_exponent` must be in \\(0.5, 1\\]"):
            fit_gaussian_mixture_stepwise([torch.randn(10, 2)], 2, step_exponent=0.5)
        bad = torch.randn(10, 2)
        bad[0, 0] = float("inf")
        with pytest.raises(ValueError, match="chunk 1 of `x` holds NaN or inf"):
            fit_gaussian_mixture_stepwise([torch.randn(10, 2), bad], 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torchgmm.mixture.ConvergenceWarning")
def test_compiled_engine_equals_the_default():
    # compile=True runs the E-step as one compiled loop (tens of seconds to compile once)
    x = blobs(n=4000, d=2)
    w = torch.rand(4000, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    kw = dict(init_params="range", tol=0, max_iter=15)
    want = fit_gaussian_mixture(x, 3, sample_weight=w, **kw)
    got = fit_gaussian_mixture(x, 3, sample_weight=w, compile=True, **kw)
    by_chunks = GaussianMixture(3, compile=True, **kw).fit(split(x, w, 1500))
    assert_same_fit(got, want, torch.float64)
    torch.testing.assert_close(by_chunks.means_, want.means[0], rtol=1e-10, atol=0)


def test_tile_size_per_device():
    # CPU: a (B, K, tile) block of 2^18 numbers, to stay in a core's L2; GPU: 2^22, fewer launches
    from torchgmm.mixture import _tile_size

    assert _tile_size(1, 5, torch.device("cpu")) == 2**18 // 5
    assert _tile_size(1, 5, torch.device("cuda")) == 2**22 // 5
    assert _tile_size(1000, 3, torch.device("cpu")) == 1024  # never below 1024 samples
