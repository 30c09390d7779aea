"""Histogram EM segmentation: references are scikit-learn fits on the raw pixels."""

from __future__ import annotations

import re

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from torchgmm._checks import ShapeError
from torchgmm.segmentation import (
    HistogramSegmenter,
    NegligibleClassWarning,
    apply_lut,
    fit_histogram_mixture,
    image_histograms,
    label_lut,
    negligible_classes,
    posterior_lut,
    range_init,
    segment_images,
    to_grey_uint8,
    to_uint8,
)

CAMERAMAN = Path(__file__).resolve().parents[1] / "torchgmm" / "data" / "cameraman.png"


@pytest.fixture(scope="module")
def cameraman() -> torch.Tensor:
    from torchgmm.io.images import decode_image_file

    return decode_image_file(CAMERAMAN).unsqueeze(0)  # (1, 1, 512, 512) uint8


def _images(b: int = 3, h: int = 24, w: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([40.0, 120.0, 210.0])
    cls = torch.randint(0, 3, (b, 1, h, w), generator=g)
    x = centres[cls] + 12 * torch.randn(b, 1, h, w, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


class TestImageHistograms:
    def test_matches_per_image_bincount(self, device):
        imgs = _images(4).to(device)
        hist = image_histograms(imgs)
        assert hist.shape == (4, 256) and hist.dtype == torch.int64
        for b in range(4):
            ref = torch.bincount(imgs[b].flatten().long().cpu(), minlength=256)
            assert torch.equal(hist[b].cpu(), ref)

    def test_non_contiguous(self):
        imgs = _images(2, 16, 16)
        nc = imgs.transpose(2, 3)
        assert not nc.is_contiguous()
        assert torch.equal(image_histograms(nc), image_histograms(nc.contiguous()))

    def test_errors(self):
        with pytest.raises(ShapeError, match="to_grey_uint8"):
            image_histograms(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
        with pytest.raises(TypeError, match="uint8"):
            image_histograms(torch.zeros(1, 1, 4, 4))
        with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
            image_histograms(torch.zeros(4, 4, dtype=torch.uint8))


class TestGrey:
    def test_luminance_bt601(self):
        rgb = torch.tensor([255, 0, 0, 0, 255, 0, 0, 0, 255], dtype=torch.uint8).view(1, 3, 1, 3)
        rgb = rgb.transpose(2, 3).reshape(1, 3, 1, 3)
        y = to_grey_uint8(rgb).flatten().tolist()
        assert y == [76, 150, 29]  # round(255 * 0.299), round(255 * 0.587), round(255 * 0.114)

    def test_16_bit_drops_low_byte(self):
        x = torch.tensor([0, 255, 256, 65535], dtype=torch.int32).to(torch.uint16).view(1, 1, 1, 4)
        assert to_grey_uint8(x).flatten().tolist() == [0, 0, 1, 255]


def _uint16(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int32).to(torch.uint16)


def _twelve_bit_plateaus(h: int = 40, w: int = 60, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) uint16: columns in thirds at 500, 1500 and 3000 (+ noise sigma 50), max < 4096."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 1, h, w), 500.0)
    x[..., w // 3 : 2 * w // 3] = 1500.0
    x[..., 2 * w // 3 :] = 3000.0
    return _uint16((x + 50 * torch.randn(x.shape, generator=g)).round().clamp(0, 4095))


class TestSixteenBit:
    """uint16 images are reduced by their own bit depth: ``v >> max(0, bit_length(max) - 8)``."""

    def test_shift_per_image_by_bit_length_of_the_maximum(self, device):
        # one image per row: its maximum sets the shift (hand-computed bit lengths)
        peaks = [0, 200, 255, 256, 4095, 2048, 32767, 32768, 65535]
        shifts = [0, 0, 0, 1, 4, 4, 7, 8, 8]
        x = torch.zeros(len(peaks), 1, 1, 3, dtype=torch.int32)
        x[:, 0, 0, 0] = torch.tensor(peaks)
        x[:, 0, 0, 1] = 100
        x[:, 0, 0, 2] = torch.tensor(peaks) // 2
        out = to_uint8(_uint16(x).to(device))
        assert out.dtype == torch.uint8 and out.shape == x.shape and out.device.type == device.type
        expected = [[max(p, 100) >> s if p else 0, 100 >> s, (p // 2) >> s] for p, s in zip(peaks, shifts)]
        expected[0] = [0, 100, 0]  # max 100: bit length 7, kept as it is
        assert out.flatten(1).tolist() == expected

    @pytest.mark.cuda
    def test_no_host_sync_on_cuda(self):
        # the shifts are found on the GPU: a tensor made on the host and copied there (as
        # the powers of two were) waits for the GPU's queue, which the debug mode refuses
        x = _uint16(torch.tensor([[0, 4095], [65535, 3]]).view(2, 1, 1, 2)).cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = to_uint8(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.cpu().flatten(1).tolist() == [[0, 255], [255, 0]]

    @pytest.mark.cuda
    def test_grey_conversion_without_host_sync_on_cuda(self):
        # the BT.601 weights are Python numbers: a weight tensor made on the host would wait
        # for the GPU's queue when copied there
        rgb = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=torch.uint8)
        x = rgb.T.reshape(1, 3, 1, 4).cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            grey = to_grey_uint8(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        # round(0.299 * 255) = 76, round(0.587 * 255) = 150, round(0.114 * 255) = 29, 18.15
        assert grey.cpu().flatten().tolist() == [76, 150, 29, 18]

    def test_full_range_16_bit_is_the_high_byte_as_before(self, cameraman):
        full = _uint16(cameraman.to(torch.int32) * 257)  # 0..65535
        high_byte = (full.to(torch.int32) >> 8).to(torch.uint8)
        assert torch.equal(high_byte, cameraman)  # (v * 257) >> 8 == v for v <= 255
        assert torch.equal(to_uint8(full), high_byte)
        labels16, fit16 = segment_images(full, 3)
        labels8, fit8 = segment_images(cameraman, 3)
        assert torch.equal(labels16, labels8)
        torch.testing.assert_close(fit16.means, fit8.means, rtol=0, atol=0)

    def test_twelve_bit_plateaus_get_three_classes(self):
        sklearn = pytest.importorskip("sklearn.mixture")
        img = _twelve_bit_plateaus()
        labels, fit = segment_images(img, 3)
        w = img.shape[-1]
        for k, cols in enumerate((slice(0, w // 3), slice(w // 3, 2 * w // 3), slice(2 * w // 3, w))):
            assert labels[0, :, cols].unique().tolist() == [k]
        # means in reduced grey levels (shift 4): about 500 / 16, 1500 / 16, 3000 / 16, minus
        # the truncation of the 4 low bits (half a level on average); equal to scikit-learn's
        # fit of the raw 12-bit pixels divided by 16
        raw = img.flatten().double().numpy()[:, None]
        ref = sklearn.GaussianMixture(3, random_state=0).fit(raw)
        ref_means = np.sort(ref.means_[:, 0]) / 16
        np.testing.assert_allclose(fit.means[0, :, 0].numpy() + 0.5, ref_means, atol=0.1)
        np.testing.assert_allclose(ref_means, [500 / 16, 1500 / 16, 3000 / 16], atol=1.0)
        np.testing.assert_allclose(fit.weights[0].numpy(), [1 / 3] * 3, atol=1e-9)

    def test_batch_mixing_12_and_16_bit_is_reduced_per_image(self, cameraman):
        twelve = _twelve_bit_plateaus(64, 64)
        small = cameraman[..., ::8, ::8]  # (1, 1, 64, 64), the whole scene: three classes
        full = _uint16(small.to(torch.int32) * 257)
        eight = _uint16(twelve.to(torch.int32) >> 4)
        both = torch.cat([twelve, full, eight])  # 12-bit, 16-bit and 8-bit data in uint16
        labels, fit = segment_images(both, 3)
        for b, one in enumerate((twelve, full, eight)):
            ref_labels, ref_fit = segment_images(one, 3)
            assert torch.equal(labels[b], ref_labels[0])
            torch.testing.assert_close(fit.means[b], ref_fit.means[0])
        assert labels[0].unique().tolist() == [0, 1, 2]
        # 12-bit data shifted by 4 and 8-bit data kept as it is: the same grey levels
        assert torch.equal(to_uint8(both)[0], to_uint8(both)[2])
        assert torch.equal(to_uint8(both)[1], small[0])

    def test_rgb_mode_and_predict_proba_use_the_same_reduction(self):
        twelve = _twelve_bit_plateaus(30, 30).expand(-1, 3, -1, -1).contiguous()
        seg = HistogramSegmenter(3, mode="rgb", random_state=0)
        labels = seg(twelve)
        assert seg.means_[0, :, 0].tolist() == sorted(seg.means_[0, :, 0].tolist())
        assert labels[0].unique().tolist() == [0, 1, 2]
        assert torch.equal(seg.predict_proba(twelve).argmax(1), labels)
        grey = HistogramSegmenter(3)
        assert torch.equal(grey(twelve), labels)  # luminance of equal channels: the grey levels
        assert torch.equal(grey.predict_proba(twelve).argmax(1), labels)

    def test_errors_and_empty(self):
        with pytest.raises(TypeError, match="uint8 or uint16"):
            to_uint8(torch.zeros(2, 2, dtype=torch.int32))
        with pytest.raises(ShapeError, match="0-d"):
            to_uint8(_uint16(7))
        assert to_uint8(_uint16(torch.zeros(2, 1, 0, 3))).shape == (2, 1, 0, 3)


class TestRangeInit:
    def test_two_intervals(self):
        hist = torch.zeros(256)
        hist[[10, 20, 200]] = torch.tensor([1.0, 1.0, 2.0])
        w, mu, var = range_init(hist, 2)
        assert torch.allclose(w, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
        assert torch.allclose(mu, torch.tensor([[15.0, 200.0]], dtype=torch.float64))
        assert torch.allclose(var, torch.tensor([[25.0, 1.0]], dtype=torch.float64))  # floor 1

    def test_empty_interval_no_nan(self):
        hist = torch.zeros(2, 256)
        hist[:, 5] = 7
        w, mu, var = range_init(hist, 4)
        for t in (w, mu, var):
            assert torch.isfinite(t).all()
        assert (var >= 1).all() and torch.allclose(w.sum(1), torch.ones(2, dtype=torch.float64))
        fit = fit_histogram_mixture(hist, 4, max_iter=5)
        assert torch.isfinite(fit.means).all() and torch.isfinite(fit.covariances).all()

    def test_data_span_cuts_the_occupied_levels(self):
        # occupied levels 100..129 (30 levels), K = 3: intervals 100..109, 110..119, 120..129
        hist = torch.zeros(2, 256)
        hist[0, [100, 105, 112, 129]] = torch.tensor([1.0, 3.0, 2.0, 2.0])
        hist[1, [0, 255]] = 1.0  # spans every level: the same cut as span="full"
        w, mu, var = range_init(hist, 3, span="data")
        assert w[0].tolist() == [0.5, 0.25, 0.25]
        assert mu[0].tolist() == [103.75, 112.0, 129.0]
        assert var[0].tolist() == [(3.75**2 + 3 * 1.25**2) / 4, 1.0, 1.0]  # floor 1 where one value
        full = range_init(hist, 3)
        for a, b in zip(full, (w, mu, var)):
            assert torch.equal(a[1], b[1])
        # span="full" put all four levels in the middle interval 86..170
        assert full[0][0, 1] == 1.0 and full[1][0, 1].item() == (100 + 3 * 105 + 2 * 112 + 2 * 129) / 8

    def test_data_span_with_fewer_levels_than_classes_is_finite(self):
        hist = torch.zeros(1, 256)
        hist[0, [7, 8]] = 5.0
        w, mu, var = range_init(hist, 4, span="data")
        for t in (w, mu, var):
            assert torch.isfinite(t).all()
        assert w[0, [0, 2]].tolist() == [0.5, 0.5] and mu[0, [0, 2]].tolist() == [7.0, 8.0]
        with pytest.raises(ValueError, match="span"):
            range_init(hist, 2, span="occupied")


class TestFitHistogramMixture:
    def test_parity_with_sklearn_on_pixels(self, cameraman):
        sklearn = pytest.importorskip("sklearn.mixture")
        k, n_iter = 3, 20
        hist = image_histograms(cameraman)
        w0, mu0, var0 = range_init(hist, k)
        fit = fit_histogram_mixture(hist, k, tol=0.0, max_iter=n_iter)
        pixels = cameraman.flatten().double().numpy()[:, None]
        ref = sklearn.GaussianMixture(
            k,
            covariance_type="full",
            tol=0.0,
            max_iter=n_iter,
            reg_covar=1e-6,
            weights_init=w0[0].numpy(),
            means_init=mu0[0].numpy()[:, None],
            precisions_init=(1 / var0[0].numpy()).reshape(k, 1, 1),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 runs every iteration
            ref.fit(pixels)
        assert int(fit.n_iter[0]) == ref.n_iter_ == n_iter
        order = np.argsort(ref.means_[:, 0])
        np.testing.assert_allclose(fit.means[0].numpy(), ref.means_[order], rtol=1e-6)
        np.testing.assert_allclose(fit.weights[0].numpy(), ref.weights_[order], rtol=1e-6)
        np.testing.assert_allclose(fit.covariances[0].numpy(), ref.covariances_[order], rtol=1e-6)
        # labels: the histogram lookup table equals sklearn's per-pixel predict
        labels = apply_lut(label_lut(fit), cameraman)
        ref_labels = np.argsort(order)[ref.predict(pixels)]
        assert (labels.flatten().numpy() == ref_labels).mean() > 0.9999

    def test_sorted_by_mean(self, device):
        fit = fit_histogram_mixture(image_histograms(_images(3).to(device)), 3)
        assert (fit.means[..., 0].diff(dim=1) > 0).all()
        assert fit.means.shape == (3, 3, 1) and fit.covariances.shape == (3, 3, 1, 1)

    def test_batched_equals_one_by_one(self, device):
        imgs = torch.cat([_images(1, 20, 20, seed=s) for s in range(3)]).to(device)
        fit = fit_histogram_mixture(image_histograms(imgs), 3, tol=1e-6)
        for b in range(3):
            one = fit_histogram_mixture(image_histograms(imgs[b : b + 1]), 3, tol=1e-6)
            torch.testing.assert_close(one.means[0], fit.means[b], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(one.weights[0], fit.weights[b], rtol=1e-9, atol=1e-9)


def _three_regions(levels=(40.0, 95.0, 140.0), size: int = 64, seed: int = 0) -> torch.Tensor:
    """(1, 1, size, 3 * size) uint8: flat regions side by side at ``levels``, noise sigma 5."""
    g = torch.Generator().manual_seed(seed)
    img = torch.cat([torch.full((1, 1, size, size), v) for v in levels], 3)
    return (img + 5 * torch.randn(img.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def _low_contrast(cameraman: torch.Tensor) -> torch.Tensor:
    """The cameraman with its grey levels squeezed into 90..150."""
    return (90 + cameraman.double() * 60 / 255).round().to(torch.uint8)


def _sklearn_on_pixels(img: torch.Tensor, k: int):
    """scikit-learn's GaussianMixture on the raw pixels: (means, weights) sorted by mean."""
    sklearn = pytest.importorskip("sklearn.mixture")
    ref = sklearn.GaussianMixture(k, random_state=0, tol=1e-6).fit(img.flatten().double().numpy()[:, None])
    order = np.argsort(ref.means_[:, 0])
    return ref.means_[order, 0], ref.weights_[order]


class TestInits:
    """``init="range"`` (default) can empty a class; ``"data-range"``/``"kmeans++"`` and the warning."""

    def test_cameraman_default_is_the_textbook_range_init_unchanged(self, cameraman):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no NegligibleClassWarning on the demo image
            labels, fit = segment_images(cameraman, 3)
        explicit, fit_range = segment_images(cameraman, 3, init="range")
        assert torch.equal(labels, explicit) and torch.equal(fit.means, fit_range.means)
        # the values of the textbook demo (before the init choice existed)
        np.testing.assert_allclose(
            fit.means[0, :, 0].numpy(), [26.738546961735366, 149.15745693751794, 205.83993312220014], rtol=1e-12
        )
        assert int(fit.n_iter[0]) == 6

    def test_range_init_empties_a_class_and_warns(self):
        img = _three_regions()
        with pytest.warns(NegligibleClassWarning, match=r"1 of 1 image.*batch index 0 \(class 1\).*kmeans\+\+"):
            labels, fit = segment_images(img, 3)
        # 95 and 140 share the interval 85..170 and 170..255 is empty: class 1 is emptied
        assert labels.unique().tolist() == [0, 2]
        assert fit.weights[0, 1] * img[0, 0].numel() < 1e-6

    @pytest.mark.parametrize("init", ["data-range", "kmeans++"])
    def test_three_regions_get_three_classes(self, init):
        img = _three_regions()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            labels, fit = segment_images(img, 3, init=init, tol=1e-6, generator=torch.Generator().manual_seed(0))
        for k in range(3):  # known answer: region k is class k
            assert labels[0, :, 64 * k : 64 * (k + 1)].unique().tolist() == [k]
        ref_means, ref_weights = _sklearn_on_pixels(img, 3)
        np.testing.assert_allclose(fit.means[0, :, 0].numpy(), ref_means, atol=1e-3)
        np.testing.assert_allclose(fit.weights[0].numpy(), ref_weights, atol=1e-5)
        np.testing.assert_allclose(ref_means, [40, 95, 140], atol=0.5)

    def test_low_contrast(self, cameraman):
        low = _low_contrast(cameraman)
        assert (int(low.min()), int(low.max())) == (90, 150)
        with pytest.warns(NegligibleClassWarning, match=r"class 0, 2\)"):
            labels, _ = segment_images(low, 3)
        assert labels.unique().tolist() == [1]  # [0, 255] cut in three: 90..150 is one interval
        ref_means, ref_weights = _sklearn_on_pixels(low, 3)
        for init in ("data-range", "kmeans++"):
            labels, fit = segment_images(low, 3, init=init, tol=1e-6, generator=torch.Generator().manual_seed(0))
            assert labels.unique().tolist() == [0, 1, 2]
            np.testing.assert_allclose(fit.means[0, :, 0].numpy(), ref_means, atol=0.01)
            np.testing.assert_allclose(fit.weights[0].numpy(), ref_weights, atol=1e-3)

    def test_warning_names_the_batch_indices(self, cameraman):
        good = cameraman[..., ::4, ::4][..., :64, :]  # (1, 1, 64, 128): three classes
        good = torch.cat([good, good[..., :64]], 3)  # 64 x 192, the size of _three_regions
        low = _low_contrast(good)
        batch = torch.cat([good, _three_regions(), good, low])
        with pytest.warns(NegligibleClassWarning) as record:
            segment_images(batch, 3)
        assert len(record) == 1
        message = str(record[0].message)
        assert "2 of 4 image(s)" in message and "batch index 1 (class 1), 3 (class 0, 2)" in message
        with pytest.warns(NegligibleClassWarning, match=r"batch index 1 \(class 1\), 3"):
            HistogramSegmenter(3)(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            HistogramSegmenter(3, init="kmeans++", random_state=0)(batch)

    def test_one_pixel_class_is_not_negligible(self):
        # a class that owns one pixel is a class; a class EM emptied is not
        img = torch.full((1, 1, 32, 32), 40, dtype=torch.uint8)
        img[0, 0, 3, 3] = 250
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            labels, fit = segment_images(img, 2)
        assert int((labels == 1).sum()) == 1
        assert negligible_classes(fit.weights, 32 * 32).tolist() == [[False, False]]
        # two pixels, three classes: class 1 can only be empty, the others hold one pixel each
        tiny = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
        with pytest.warns(NegligibleClassWarning, match=r"batch index 0 \(class 1\)\."):
            _, fit = segment_images(tiny, 3)
        np.testing.assert_allclose((fit.weights * 2).numpy(), [[1, 0, 1]], atol=1e-12)

    def test_module_takes_init_and_equals_function(self):
        img = _three_regions()
        for init in ("data-range", "kmeans++", "random"):
            seg = HistogramSegmenter(3, init=init, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NegligibleClassWarning)
                labels = seg(img)
                ref, fit = segment_images(img, 3, init=init, generator=torch.Generator().manual_seed(0))
            # the module seeds each image alone and runs EM from that explicit init: equal
            # to rounding (the init's covariances pass through their inverse)
            assert torch.equal(labels, ref)
            torch.testing.assert_close(seg.means_, fit.means, rtol=1e-10, atol=1e-10)
            assert f"init={init!r}" in repr(seg)
        with pytest.raises(ValueError, match="init"):
            HistogramSegmenter(3, init="kmeans")
        with pytest.raises(ValueError, match="init"):
            segment_images(img, 3, init="kmeans")

    def test_rgb_mode_has_no_init_choice(self):
        rgb = _three_regions(size=16).expand(-1, 3, -1, -1).contiguous()
        a, fa = segment_images(rgb, 3, mode="rgb", generator=torch.Generator().manual_seed(0))
        b, fb = segment_images(rgb, 3, mode="rgb", init="data-range", generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and torch.equal(fa.means, fb.means)


class TestLabels:
    def test_labels_are_argmax_posterior(self, cameraman):
        hist = image_histograms(cameraman)
        fit = fit_histogram_mixture(hist, 3)
        post = posterior_lut(fit)
        assert post.shape == (1, 3, 256)
        torch.testing.assert_close(post.sum(1), torch.ones(1, 256, dtype=torch.float64))
        assert torch.equal(label_lut(fit), post.argmax(1))

    def test_label_zero_is_darkest(self, cameraman):
        labels, fit = segment_images(cameraman, 3)
        mean_grey = [cameraman[0, 0][labels[0] == k].double().mean() for k in range(3)]
        assert mean_grey[0] < mean_grey[1] < mean_grey[2]

    def test_apply_lut_3d(self):
        imgs = _images(2, 5, 6)
        lut = torch.arange(2 * 4 * 256).view(2, 4, 256)
        out = apply_lut(lut, imgs)
        assert out.shape == (2, 4, 5, 6)
        assert out[1, 2, 3, 4] == lut[1, 2, imgs[1, 0, 3, 4].long()]


class TestHistogramSegmenter:
    def test_module_equals_function(self, device):
        imgs = _images(3).to(device)
        seg = HistogramSegmenter(3).to(device)
        labels = seg(imgs)
        ref, fit = segment_images(imgs, 3)
        assert labels.dtype == torch.int64 and labels.shape == (3, 24, 20)
        assert torch.equal(labels, ref)
        torch.testing.assert_close(seg.means_, fit.means)
        assert seg.weights_.shape == (3, 3) and seg.variances_.shape == (3, 3)
        assert labels.device.type == device.type

    def test_predict_proba(self, device):
        imgs = _images(2).to(device)
        seg = HistogramSegmenter(3)
        labels = seg(imgs)
        proba = seg.predict_proba(imgs)
        assert proba.shape == (2, 3, 24, 20)
        torch.testing.assert_close(proba.sum(1), torch.ones_like(proba[:, 0]))
        assert torch.equal(proba.argmax(1), labels)

    @pytest.mark.parametrize("init", ["kmeans++", "random"])
    def test_seeded_image_gets_its_alone_result_in_any_batch(self, init):
        """random_state seeds each image's draws: its fit is segment_images of it alone with
        a generator seeded alike, whatever else is in the batch."""
        imgs = _images(4)
        seg = HistogramSegmenter(3, init=init, random_state=5)
        labels = seg(imgs)
        for i in range(4):
            alone, fit = segment_images(imgs[i : i + 1], 3, init=init, generator=torch.Generator().manual_seed(5))
            assert torch.equal(labels[i], alone[0])
            torch.testing.assert_close(seg.means_[i], fit.means[0], rtol=1e-10, atol=1e-10)
        shuffled = HistogramSegmenter(3, init=init, random_state=5)(imgs.flip(0))
        assert torch.equal(shuffled.flip(0), labels)
        with pytest.raises(ValueError, match="sequence of 4"):
            segment_images(imgs, 3, init=init, generator=[torch.Generator()] * 3)

    def test_one_unbatched_image_as_a_torchvision_transform(self):
        """A (C, H, W) image gives (H, W) labels: the batched result of that image alone."""
        from torchvision import transforms

        imgs = _images(2)
        seg = HistogramSegmenter(3)
        pipeline = transforms.Compose([seg])
        for i in range(2):
            labels = pipeline(imgs[i])
            assert labels.shape == (24, 20)
            assert torch.equal(labels, segment_images(imgs[i : i + 1], 3)[0][0])
            assert seg.means_.shape == (1, 3, 1)
            proba = seg.predict_proba(imgs[i])
            assert proba.shape == (3, 24, 20) and torch.equal(proba.argmax(0), labels)
        for image in (torch.full((1, 8, 8), 7, dtype=torch.uint8), torch.full((1, 1, 8, 8), 7, dtype=torch.uint8)):
            with pytest.warns(NegligibleClassWarning) as caught:
                HistogramSegmenter(3)(image)
            assert caught[0].filename == __file__  # the warning names the caller's line, not torch's

    def test_the_shape_rule_refuses_what_it_cannot_tell(self):
        # 3-D is one (C, H, W) image, never a batch of grey images; 2-D is refused: both say what to pass
        seg = HistogramSegmenter(2)
        rgb = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
        assert seg(rgb).shape == (8, 8) and seg.means_.shape == (1, 2, 1)  # one RGB image, luminance
        for shape, hint in [
            ((5, 8, 8), r"a 3-D tensor is one \(C, H, W\) image .* \(B, 1, H, W\)"),
            ((2, 8, 8), r"got|a 3-D tensor is one"),
            ((8, 8), r"a grey image needs its channel dimension, \(1, H, W\)"),
        ]:
            x = torch.zeros(shape, dtype=torch.uint8)
            with pytest.raises(ShapeError, match=rf"`images` of shape {re.escape(str(shape))}: .*"):
                seg(x)
            with pytest.raises(ShapeError, match=hint):
                seg.predict_proba(x)

    def test_rgb_luminance_and_rgb_mode(self):
        grey = _images(2)
        rgb = grey.expand(-1, 3, -1, -1).contiguous()
        assert torch.equal(HistogramSegmenter(3)(rgb), HistogramSegmenter(3)(grey))
        seg = HistogramSegmenter(3, mode="rgb", random_state=0, n_samples=300)
        labels = seg(rgb)
        assert labels.shape == (2, 24, 20) and seg.means_.shape == (2, 3, 3)
        luma = seg.means_ @ torch.tensor([0.299, 0.587, 0.114], dtype=seg.means_.dtype)
        assert (luma.diff(dim=1) > 0).all()
        assert torch.equal(seg.predict_proba(rgb).argmax(1), labels)

    def test_state_dict_deepcopy(self):
        imgs = _images(2)
        seg = HistogramSegmenter(3)
        seg(imgs)
        other = HistogramSegmenter(3)
        other.load_state_dict(seg.state_dict())
        torch.testing.assert_close(other.predict_proba(imgs), seg.predict_proba(imgs))
        torch.testing.assert_close(copy.deepcopy(seg).means_, seg.means_)

    def test_errors(self):
        seg = HistogramSegmenter(2)
        with pytest.raises(RuntimeError, match="call it on images first"):
            seg.predict_proba(_images(1))
        with pytest.raises(ShapeError, match="alpha"):
            seg(torch.zeros(1, 4, 3, 3, dtype=torch.uint8))
        with pytest.raises(ValueError, match="mode"):
            HistogramSegmenter(2, mode="hsv")
        # settings are checked when the module is made, not at its first batch
        with pytest.raises(ValueError, match="max_iter"):
            HistogramSegmenter(2, max_iter=0)
        with pytest.raises(ValueError, match="tol"):
            HistogramSegmenter(2, tol=float("nan"))
        with pytest.raises(TypeError, match="label_dtype"):
            HistogramSegmenter(2, label_dtype=torch.bool)
        with pytest.raises(ValueError, match="reg_covar"):
            HistogramSegmenter(2, reg_covar=-1.0)
        seg(_images(1))
        with pytest.raises(ShapeError, match="batch size"):
            seg.predict_proba(_images(2))


class TestOnDevice:
    """The histogram EM on every device: deterministic inits equal the CPU result; random
    ones, drawn from generators on the images' device, equal each image alone."""

    @pytest.mark.parametrize("init, expected", [("range", [0, 1, 2]), ("data-range", [0, 0, 0])])
    def test_one_grey_level_keeps_the_class_of_its_init(self, device, init, expected):
        # every class fits the one level exactly (all means equal), so the sort by mean ties
        # and must keep the init's order: "range" starts the class of the level's interval
        # (30: 0..85, 100: 86..170, 255: 171..255) on it, "data-range" class 0. A bitonic
        # sort (CUDA's default for K <= 32) permutes equal keys and moved the pixels' class.
        imgs = torch.tensor([30, 100, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 8, 8).to(device)
        with pytest.warns(NegligibleClassWarning):
            labels, fit = segment_images(imgs, 3, init=init)
        assert fit.means[..., 0].tolist() == [[30.0] * 3, [100.0] * 3, [255.0] * 3]
        assert [labels[b].unique().tolist() for b in range(3)] == [[k] for k in expected]
        assert fit.weights.argmax(1).tolist() == expected
        assert negligible_classes(fit.weights, 64).sum(1).tolist() == [2, 2, 2]

    @pytest.mark.parametrize("init", ["range", "data-range"])
    def test_range_inits_equal_the_cpu(self, device, init):
        batch = torch.cat([_images(2, 16, 48), _three_regions(size=16), _low_contrast(_images(1, 16, 48))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NegligibleClassWarning)  # range: images 2 and 3
            ref_labels, ref = segment_images(batch, 3, init=init, tol=1e-6)
            labels, fit = segment_images(batch.to(device), 3, init=init, tol=1e-6)
        assert labels.device.type == device.type and torch.equal(labels.cpu(), ref_labels)
        for got, want in zip(fit[:4], ref[:4]):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
        assert torch.equal(fit.n_iter.cpu(), ref.n_iter)
        # the known answers: the range cut empties class 1 of the three regions (95 and 140
        # share 85..170), the data-range cut finds them
        expected = [[0, 2], [0, 1, 2]][init == "data-range"]
        assert labels[2].unique().tolist() == expected

    def test_negligible_class_warning_on_device(self, device):
        img = _three_regions(size=16).to(device)
        with pytest.warns(NegligibleClassWarning, match=r"1 of 1 image.*batch index 0 \(class 1\)"):
            labels, fit = segment_images(img, 3)
        assert negligible_classes(fit.weights, img[0, 0].numel()).tolist() == [[False, True, False]]
        with pytest.warns(NegligibleClassWarning, match=r"batch index 0 \(class 1\)"):
            assert torch.equal(HistogramSegmenter(3).to(device)(img), labels)

    @pytest.mark.parametrize("init", ["kmeans++", "random"])
    def test_random_inits_with_device_generators_equal_each_image_alone(self, device, init):
        separated = _three_regions(levels=(40.0, 120.0, 210.0), size=16)
        imgs = torch.cat([_images(2, 16, 48), separated]).to(device)
        seeds = (3, 4, 5)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        labels, fit = segment_images(imgs, 3, init=init, tol=1e-6, generator=generators)
        seg = HistogramSegmenter(3, init=init, tol=1e-6, random_state=5)  # seeds each image with 5
        by_module = seg(imgs)
        for i, seed in enumerate(seeds):
            alone, one = segment_images(
                imgs[i : i + 1], 3, init=init, tol=1e-6, generator=torch.Generator(device=device).manual_seed(seed)
            )
            assert torch.equal(labels[i], alone[0])
            torch.testing.assert_close(fit.means[i], one.means[0], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(fit.weights[i], one.weights[0], rtol=1e-9, atol=1e-9)
        alone5, one5 = segment_images(
            imgs, 3, init=init, tol=1e-6, generator=[torch.Generator(device=device).manual_seed(5) for _ in seeds]
        )
        assert torch.equal(by_module, alone5) and by_module.device.type == device.type
        torch.testing.assert_close(seg.means_, one5.means, rtol=1e-9, atol=1e-9)
        if init == "kmeans++":  # the known answer (k-means++ found it for 200 of 200 CPU seeds)
            for k in range(3):
                assert labels[2, :, 16 * k : 16 * (k + 1)].unique().tolist() == [k]

    def test_rgb_mode_with_device_generators_equals_each_image_alone(self, device):
        rgb = torch.cat([_images(2, 16, 16, seed=s) for s in (1, 2, 3)], 1).to(device)  # (2, 3, 16, 16)
        generators = [torch.Generator(device=device).manual_seed(s) for s in (7, 8)]
        labels, fit = segment_images(rgb, 3, mode="rgb", n_samples=100, generator=generators)
        assert fit.means.shape == (2, 3, 3) and fit.means.device.type == device.type
        for i, seed in enumerate((7, 8)):
            alone, one = segment_images(
                rgb[i : i + 1], 3, mode="rgb", n_samples=100, generator=torch.Generator(device=device).manual_seed(seed)
            )
            assert torch.equal(labels[i], alone[0])
            torch.testing.assert_close(fit.means[i], one.means[0], rtol=1e-9, atol=1e-9)
        luma = fit.means @ torch.tensor([0.299, 0.587, 0.114], dtype=fit.means.dtype, device=device)
        assert (luma.diff(dim=1) > 0).all()

    def test_sixteen_bit_on_device_equals_the_cpu(self, device):
        twelve = _twelve_bit_plateaus(16, 48)
        full = _uint16(_images(1, 16, 48).to(torch.int32) * 257)
        both = torch.cat([twelve, full])
        assert torch.equal(to_uint8(both.to(device)).cpu(), to_uint8(both))
        labels, fit = segment_images(both.to(device), 3)
        ref_labels, ref = segment_images(both, 3)
        assert torch.equal(labels.cpu(), ref_labels)
        torch.testing.assert_close(fit.means.cpu(), ref.means, rtol=1e-9, atol=1e-9)
        # the known answer: the 12-bit plateaus (thirds of the columns) are the three classes
        for k in range(3):
            assert labels[0, :, 16 * k : 16 * (k + 1)].unique().tolist() == [k]
        # and the full-range image is its 8-bit self
        assert torch.equal(labels[1], segment_images(_images(1, 16, 48).to(device), 3)[0][0])

    def test_segmenter_on_one_chw_image_on_device(self, device):
        rgb = torch.cat([_images(1, 16, 20, seed=s) for s in (1, 2, 3)], 1)[0]  # (3, 16, 20)
        seg = HistogramSegmenter(3).to(device)
        labels = seg(rgb.to(device))
        assert labels.shape == (16, 20) and labels.device.type == device.type
        assert torch.equal(labels.cpu(), segment_images(rgb[None], 3)[0][0])
        assert seg.means_.shape == (1, 3, 1) and seg.means_.device.type == device.type
        proba = seg.predict_proba(rgb.to(device))
        assert proba.shape == (3, 16, 20) and torch.equal(proba.argmax(0), labels)
        torch.testing.assert_close(proba.sum(0), torch.ones_like(proba[0]))
        grey16 = _twelve_bit_plateaus(16, 48)[0]  # (1, H, W) uint16
        seg16 = HistogramSegmenter(3, init="data-range").to(device)
        labels16 = seg16(grey16.to(device))
        assert torch.equal(labels16.cpu(), segment_images(grey16[None], 3, init="data-range")[0][0])
        assert torch.equal(seg16.predict_proba(grey16.to(device)).argmax(0), labels16)


def test_convergence_warning():
    from torchgmm.mixture import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        HistogramSegmenter(3, max_iter=1, tol=0.0)(_images(2))


def test_uint8_labels_equal_int64():
    imgs = _images(3)
    a = HistogramSegmenter(3)(imgs)
    b = HistogramSegmenter(3, label_dtype=torch.uint8)(imgs)
    assert b.dtype == torch.uint8 and torch.equal(a, b.long())


def test_run_demo(tmp_path, capsys):
    from torchgmm.demo import run_demo

    assert run_demo(tmp_path / "demo", n_classes=3) == 0
    printed = capsys.readouterr().out
    for name in ("cameraman_labels.png", "cameraman_colour.png", "cameraman_fit.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0 and name in printed
    from torchgmm.io.images import decode_image_file

    labels = decode_image_file(tmp_path / "demo" / "cameraman_labels.png")
    assert labels.shape == (1, 512, 512) and set(labels.unique().tolist()) == {0, 1, 2}


def test_colourise_matches_palette(device):
    from torchgmm.segmentation import colourise, palette

    labels = torch.randint(0, 12, (2, 5, 7), device=device)
    ref = palette(12).to(device)[labels].permute(0, 3, 1, 2)
    out = colourise(labels, 12)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.uint8 and torch.equal(out, ref)
    assert len({tuple(c) for c in palette(12).tolist()}) == 12  # distinct colours beyond tab10


class TestPaletteAndPngErrors:
    def test_palette_rejects_non_positive(self):
        from torchgmm.segmentation import palette

        with pytest.raises(ValueError, match="n_classes"):
            palette(0)
        with pytest.raises(ValueError, match="n_classes"):
            palette(-3)

    def test_colourise_rejects_wrong_labels(self):
        from torchgmm.segmentation import colourise

        with pytest.raises(ShapeError, match="labels"):
            colourise(torch.zeros(4, 4, dtype=torch.int64), 2)
        with pytest.raises(ShapeError, match="labels"):
            colourise(torch.zeros(1, 4, 4), 2)

    def test_write_png_bool_mask_is_0_255_and_bad_input_named(self, tmp_path):
        from torchgmm.io.images import decode_image_file, write_png

        mask = torch.tensor([[True, False], [False, True]])
        write_png(tmp_path / "m.png", mask)
        assert decode_image_file(tmp_path / "m.png")[0].tolist() == [[255, 0], [0, 255]]
        with pytest.raises(TypeError, match="bad.png"):
            write_png(tmp_path / "bad.png", torch.zeros(2, 2))
        with pytest.raises(ShapeError, match="C = 1 or 3"):
            write_png(tmp_path / "bad.png", torch.zeros(2, 2, 2, dtype=torch.uint8))
        assert not (tmp_path / "bad.png").exists()


def test_write_png_refuses_empty_image_before_encoding(tmp_path):
    from torchgmm.io.images import write_png

    # libpng used to crash the interpreter on these; now a ShapeError names the file
    for shape in ((1, 0, 4), (3, 4, 0), (0, 4)):
        with pytest.raises(ShapeError, match=r"empty\.png.*H >= 1 and W >= 1"):
            write_png(tmp_path / "empty.png", torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        write_png(tmp_path / "empty.png", np.zeros((2, 2), np.uint8))
    assert not list(tmp_path.iterdir())


class TestSegmentImagesErrors:
    def test_empty_batch_or_image(self):
        for shape in ((0, 1, 8, 8), (1, 1, 0, 8), (1, 1, 8, 0), (1, 3, 0, 8)):
            with pytest.raises(ShapeError, match=r"B, H, W >= 1"):
                segment_images(torch.zeros(shape, dtype=torch.uint8), 2)
        with pytest.raises(ShapeError, match=r"B, H, W >= 1"):
            segment_images(torch.zeros(1, 3, 8, 0, dtype=torch.uint8), 2, mode="rgb")

    def test_label_dtype_must_hold_all_classes(self):
        imgs = _images(1)
        for bad in (torch.bool, torch.float32):
            with pytest.raises(TypeError, match="label_dtype"):
                segment_images(imgs, 3, label_dtype=bad)
        with pytest.raises(TypeError, match="label_dtype"):
            HistogramSegmenter(3, label_dtype=torch.bool)(imgs)
        rgb = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        with pytest.raises(ValueError, match="cannot hold label 199"):
            segment_images(rgb, 200, mode="rgb", label_dtype=torch.int8)
        labels, _ = segment_images(imgs, 3, label_dtype=torch.int16)
        assert labels.dtype == torch.int16 and labels.max() == 2

    def test_em_settings_as_in_sklearn(self):
        # scikit-learn's GaussianMixture: max_iter >= 1, tol >= 0
        imgs = _images(1)
        with pytest.raises(ValueError, match="max_iter"):
            segment_images(imgs, 3, max_iter=0)
        with pytest.raises(ValueError, match="max_iter"):
            fit_histogram_mixture(image_histograms(imgs), 3, max_iter=0)
        for tol in (float("nan"), -1.0):
            with pytest.raises(ValueError, match="tol"):
                HistogramSegmenter(3, tol=tol)(imgs)

    def test_rgb_needs_k_pixels(self):
        tiny = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)  # (1, 3, 1, 2)
        with pytest.raises(ValueError, match=r"n_classes=3 pixels.*H x W = 2"):
            segment_images(tiny, 3, mode="rgb")
        assert segment_images(tiny, 2, mode="rgb")[0].shape == (1, 1, 2)
        # the histogram mode always fits 256 grey levels: fewer pixels than K is fine (and
        # leaves a class empty: two pixels hold two classes)
        with pytest.warns(NegligibleClassWarning, match=r"batch index 0 \(class 1\)"):
            assert segment_images(tiny[:, :1], 3)[0].shape == (1, 1, 2)


def test_colourise_rejects_labels_outside_0_to_k():
    from torchgmm.segmentation import colourise

    with pytest.raises(ValueError, match=r"0\.\.2 for n_classes=3, got values from 0 to 7"):
        colourise(torch.tensor([[[0, 7]]]), 3)
    with pytest.raises(ValueError, match="from -1 to 0"):
        colourise(torch.tensor([[[-1, 0]]]), 3)
    assert colourise(torch.zeros(1, 0, 4, dtype=torch.uint8), 3).shape == (1, 3, 0, 4)
