"""Per-pixel Stauffer-Grimson background model (``torchgmm.background``).

References are independent of the implementation:

- ``tests/reference_background.py``: a slow per-pixel loop in float64 written from the
  specification's numbered steps; the module in float64 must equal it (masks identical,
  state to 1e-9) on random sequences where matches, misses, replacements and re-sorting
  all happen.
- OpenCV contrib ``cv2.bgsegm.createBackgroundSubtractorMOG`` with matched settings.
- Closed forms: the number of frames after which a stopped object is absorbed into the
  background follows from the weight update.
"""

from __future__ import annotations

import copy
import math
import inspect
import os
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from reference_background import reference_mog, reference_pixel_step
import torchgmm.background as background_module
from torchgmm.background import BackgroundSubtractorMOG, component_major

RHO_MODES = ["inverse_weight", "constant", "paper"]
COVARIANCE_TYPES = ["spherical", "diag"]

# Settings under which the module corresponds to OpenCV contrib bgsegm MOG (the spec's last section).
OPENCV_SETTINGS = dict(
    learning_rate=1 / 200,
    warmup=True,
    rho="constant",
    covariance_type="diag",
    init_var=900.0,
    init_weight=0.05,
    min_var=225.0,
    match_sigma=2.5,
    background_ratio=0.7,
)


# ----------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------
def random_sequence(seed: int, n_channels: int, n_frames: int = 50, height: int = 6, width: int = 5) -> np.ndarray:
    """``(T, C, H, W)`` uint8: per-pixel backgrounds with noise, bimodal pixels, jumps, objects.

    Built so that every branch of the update runs: matches (the background), misses and
    replacements (objects passing, outliers, permanent jumps), re-sorting (a new value
    that stays long enough to overtake the old one, bimodal pixels whose two components
    trade places), noise-free pixels (variance floor, equal keys).
    """
    rng = np.random.default_rng(seed)
    t_, c_, h_, w_ = n_frames, n_channels, height, width
    base = rng.uniform(20, 235, (c_, h_, w_))
    sigma = rng.choice([0.0, 1.0, 3.0, 6.0], size=(1, h_, w_))
    x = np.broadcast_to(base, (t_, c_, h_, w_)).copy()
    # Bimodal pixels: a second value 50..90 grey levels away, taken 30-50% of the time.
    bimodal = rng.random((h_, w_)) < 0.25
    second = np.clip(base + rng.choice([-1, 1], (c_, h_, w_)) * rng.uniform(50, 90, (c_, h_, w_)), 0, 255)
    take = (rng.random((t_, 1, h_, w_)) < rng.uniform(0.3, 0.5, (1, h_, w_))) & bimodal
    x = np.where(take, second[None], x)
    # Permanent jumps (an object that arrives and stays, a light switched on).
    for i, j in zip(*np.nonzero(rng.random((h_, w_)) < 0.25)):
        t0 = rng.integers(t_ // 6, max(t_ // 6 + 1, t_ - 15))
        x[t0:, :, i, j] = rng.uniform(0, 255, c_)
    # Transient objects: rectangles of one colour for 1-6 frames.
    for _ in range(n_frames // 3):
        t0, dur = rng.integers(2, t_), rng.integers(1, 7)
        i0, j0 = rng.integers(0, h_), rng.integers(0, w_)
        colour = rng.uniform(0, 255, (c_, 1, 1))
        x[t0 : t0 + dur, :, i0 : i0 + rng.integers(1, 4), j0 : j0 + rng.integers(1, 4)] = colour
    # Single-frame outliers.
    out = rng.random((t_, 1, h_, w_)) < 0.02
    x = np.where(out, rng.uniform(0, 255, (t_, c_, h_, w_)), x)
    x = x + sigma[None] * rng.standard_normal((t_, c_, h_, w_))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def explicit_rates(n_frames: int) -> list[float | None]:
    """Per-frame explicit rates: None (schedule) except a few, including 0 mid-sequence."""
    rates: list[float | None] = [None] * n_frames
    rates[0] = 0.0  # the first frame initialises whatever the rate says
    rates[12], rates[13], rates[14] = 0.3, 0.0, 0.0
    rates[27] = 0.0
    rates[33], rates[34] = 0.01, 0.6
    rates[41] = 0.0
    return rates


def moving_scene(
    n_frames: int = 300,
    height: int = 60,
    width: int = 80,
    n_channels: int = 3,
    seed: int = 0,
    noise: float = 3.0,
    start: int = 40,
) -> tuple[np.ndarray, np.ndarray]:
    """``(T, C, H, W)`` uint8 textured scene with noise; from frame ``start``: three bouncing
    objects, an object that slides in and stops (110 frames later for W = 80), a flickering
    patch. Also returns the ``(T, H, W)`` truth of the bouncing objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [60 + 100 * xx / width + 30 * np.sin(yy / 5.0), 90 + 80 * yy / height, 140 + 40 * np.cos(xx / 7.0 + yy / 11.0)]
    )[:n_channels]
    base = base + rng.normal(0, 10, base.shape)
    objects = [
        dict(p=np.array([10.0, 5.0]), v=np.array([0.6, 1.3]), s=(12, 9), col=rng.uniform(0, 255, 3)),
        dict(p=np.array([40.0, 60.0]), v=np.array([-0.9, -0.7]), s=(8, 14), col=rng.uniform(0, 255, 3)),
        dict(p=np.array([30.0, 30.0]), v=np.array([1.1, -1.6]), s=(6, 6), col=rng.uniform(0, 255, 3)),
    ]
    frames = np.empty((n_frames, n_channels, height, width), np.uint8)
    truth = np.zeros((n_frames, height, width), bool)
    for t in range(n_frames):
        img = base + rng.normal(0, noise, base.shape)
        if t >= start:
            for o in objects:
                o["p"] += o["v"]
                for d, lim in ((0, height - o["s"][0]), (1, width - o["s"][1])):
                    if not 0 <= o["p"][d] <= lim:
                        o["v"][d] *= -1
                        o["p"][d] = np.clip(o["p"][d], 0, lim)
                y, x = int(o["p"][0]), int(o["p"][1])
                sy, sx = o["s"]
                colour = o["col"][:n_channels, None, None]
                img[:, y : y + sy, x : x + sx] = colour + rng.normal(0, noise, (n_channels, sy, sx))
                truth[t, y : y + sy, x : x + sx] = True
            x0 = min(5 + (t - start) // 2, width - 20)  # slides in, stops
            y0 = int(0.75 * height)
            patch = np.array([200.0, 40.0, 90.0])[:n_channels, None, None] + rng.normal(0, noise, (n_channels, 10, 10))
            img[:, y0 : y0 + 10, x0 : x0 + 10] = patch[:, : height - y0]
            if rng.random() < 0.4:  # flicker
                img[:, 5:15, int(0.75 * width) : int(0.9375 * width)] += 70
        frames[t] = np.clip(np.round(img), 0, 255)
    return frames, truth


def run_frames(model: BackgroundSubtractorMOG, frames, rates=None) -> torch.Tensor:
    """Feed ``(T, B, C, H, W)`` (or ``(T, C, H, W)`` as B = 1) frame by frame: ``(T, B, H, W)`` masks."""
    frames = torch.as_tensor(frames)
    if frames.ndim == 4:
        frames = frames[:, None]
    rates = rates or [None] * len(frames)
    return torch.stack([model(f, learning_rate=r)[:, 0] for f, r in zip(frames, rates)])


def state_of(model: BackgroundSubtractorMOG) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


def assert_module_equals(ref_masks, ref, frames, rates, device, **settings) -> None:
    """The float64 eager module fed ``frames`` gives the reference's masks and state (to 1e-9)."""
    model = BackgroundSubtractorMOG(**settings, state_dtype=torch.float64, compile=False).to(device)
    masks = run_frames(model, frames.to(device), rates)[:, 0]
    bad = np.argwhere(masks.cpu().numpy() != ref_masks)
    assert len(bad) == 0, f"{len(bad)} mask differences, first (t, i, j): {bad[:5].tolist()}"
    assert int(model.frames_seen) == ref["frames_seen"]
    for name in ("weight", "mean", "variance"):
        got = getattr(model, name)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got[0].cpu().numpy(), ref[name], rtol=1e-9, atol=1e-9, err_msg=name)


#: the settings the hand-computed cases were worked out with (sigma 30 new, floor 4, T = 0.7,
#: rho = alpha / w), not the defaults: larger numbers keep the arithmetic in the comments readable
HAND_COMPUTED = dict(init_var=900.0, min_var=16.0, background_ratio=0.7, rho="inverse_weight")


def compare(values, rates, device, n_channels: int = 1, **settings):
    """One pixel, ``values`` on the 0..255 scale (floats allowed): reference == module; reference's result.

    The module gets ``values / 255`` as float64 frames, the reference ``(values / 255) * 255``:
    the same operation the module applies, so both see the same numbers.
    """
    settings = {**HAND_COMPUTED, **settings}
    u = np.asarray(values, dtype=np.float64)[:, None, None, None].repeat(n_channels, 1) / 255
    ref_masks, ref = reference_mog(u * 255, learning_rates=rates, **settings)
    assert_module_equals(ref_masks, ref, torch.from_numpy(u), rates, device, **settings)
    return ref_masks[:, 0, 0].tolist(), ref


# ----------------------------------------------------------------------------------------
# The reference itself: tiny hand-computed cases
# ----------------------------------------------------------------------------------------
class TestReference:
    def test_one_pixel_three_frames(self):
        frames = np.array([100, 100, 200], dtype=np.uint8).reshape(3, 1, 1, 1)
        counters: dict = {}
        masks, st = reference_mog(
            frames, n_components=3, learning_rate=0.1, warmup=False, counters=counters, **HAND_COMPUTED
        )
        # Frame 1 (a = 1): no match, component 2 <- (0.05, 100, 900), renormalised to 1, sorted first.
        # Frame 2 (a = 0.1): matches k=0, w = 0.9 + 0.1 = 1, rho = 0.1 / 1, var = 900 - 0.1 * 900 = 810.
        # Frame 3: |200 - 100|^2 = 1e4 >= 6.25 * 810: no match; w0 = 0.9, component 2 <- (0.05, 200, 900),
        #   w = [0.9, 0, 0.05] / 0.95; keys [0.947/28.5, 0, 0.0526/30] -> order [0, 2, 1]: the new
        #   component has rank 1, exclusive cumulative weight 0.947 > 0.7: foreground.
        assert masks[:, 0, 0].tolist() == [False, False, True]
        np.testing.assert_allclose(st["weight"][:, 0, 0], [0.9 / 0.95, 0.05 / 0.95, 0.0], rtol=1e-15)
        np.testing.assert_allclose(st["mean"][:, 0, 0, 0], [100.0, 200.0, 0.0], rtol=1e-15)
        np.testing.assert_allclose(st["variance"][:, 0, 0], [810.0, 900.0, 900.0], rtol=1e-15)
        assert st["frames_seen"] == 3
        assert counters == {"replace": 2, "match": 1, "reorder": 2, "foreground": 1, "background": 2}

    def test_diag_rgb_constant_rate(self):
        frames = np.array([[10, 20, 30], [14, 20, 26]], dtype=np.uint8).reshape(2, 3, 1, 1)
        masks, st = reference_mog(
            frames, learning_rate=0.25, warmup=False, covariance_type="diag", **{**HAND_COMPUTED, "rho": "constant"}
        )
        assert not masks.any()
        # mu <- mu + 0.25 (x - mu); var_c <- 900 + 0.25 (diff_c^2 - 900)
        np.testing.assert_allclose(st["mean"][0, :, 0, 0], [11.0, 20.0, 29.0], rtol=1e-15)
        np.testing.assert_allclose(st["variance"][0, :, 0, 0], [679.0, 675.0, 679.0], rtol=1e-15)
        np.testing.assert_allclose(st["weight"][:, 0, 0], [1.0, 0.0, 0.0], rtol=1e-15)

    def test_paper_rate_spherical(self):
        frames = np.array([50, 56], dtype=np.uint8).reshape(2, 1, 1, 1)
        _, st = reference_mog(frames, learning_rate=0.5, warmup=False, **{**HAND_COMPUTED, "rho": "paper"})
        eta = math.exp(-36 / 1800) / math.sqrt(2 * math.pi * 900)
        assert st["mean"][0, 0, 0, 0] == pytest.approx(50 + 0.5 * eta * 6, rel=1e-14)
        assert st["variance"][0, 0, 0] == pytest.approx(900 + 0.5 * eta * (36 - 900), rel=1e-14)

    def test_equal_keys_keep_their_order_and_cumulative_weight(self):
        w, mu, var = [0.4, 0.4, 0.2], [[0.0], [100.0], [200.0]], [[100.0], [100.0], [100.0]]
        kw = dict(background_ratio=0.7, match_sigma=2.5, init_var=900.0, min_var=16.0, init_weight=0.05, rho="constant")
        # x = 200 hits component 2: w = [0.36, 0.36, 0.28], var2 = 90; keys 0.036, 0.036, 0.0295.
        fg, w2, _, var2, hit, order = reference_pixel_step([200.0], w, mu, var, 0.1, **kw)
        assert hit == 2 and order == [0, 1, 2] and var2[2] == [90.0]
        assert fg  # exclusive cumulative weight 0.72 > 0.7
        # x = 100 hits component 1, which overtakes component 0 and becomes background.
        fg, _, mu3, _, hit, order = reference_pixel_step([100.0], w, mu, var, 0.1, **kw)
        assert hit == 1 and order == [1, 0, 2] and mu3[0] == [100.0] and not fg

    def test_inference_leaves_state(self):
        frames = np.array([100, 100, 200, 100], dtype=np.uint8).reshape(4, 1, 1, 1)
        masks, st = reference_mog(
            frames, learning_rate=0.1, warmup=False, learning_rates=[None, None, 0.0, 0.0], **HAND_COMPUTED
        )
        _, st2 = reference_mog(frames[:2], learning_rate=0.1, warmup=False, **HAND_COMPUTED)
        assert masks[:, 0, 0].tolist() == [False, False, True, False]
        assert st["frames_seen"] == 2
        for name in ("weight", "mean", "variance"):
            np.testing.assert_array_equal(st[name], st2[name])

    def test_static_scene_no_foreground(self):
        rng = np.random.default_rng(0)
        base = rng.uniform(0, 255, (3, 4, 4))
        frames = np.clip(np.round(base + rng.normal(0, 2, (40, 3, 4, 4))), 0, 255).astype(np.uint8)
        for cov in COVARIANCE_TYPES:
            masks, _ = reference_mog(frames, covariance_type=cov)
            assert not masks.any()


# ----------------------------------------------------------------------------------------
# Module == reference (float64, eager)
# ----------------------------------------------------------------------------------------
class TestModuleEqualsReference:
    @pytest.mark.parametrize("n_components", [3, 5])
    @pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "nowarmup"])
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    @pytest.mark.parametrize("rho", RHO_MODES)
    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    def test_random_sequence(self, device, n_channels, rho, covariance_type, warmup, n_components):
        seed = 1000 * n_channels + 100 * RHO_MODES.index(rho) + 10 * n_components + 2 * warmup
        seed += COVARIANCE_TYPES.index(covariance_type)
        frames = random_sequence(seed, n_channels)
        rates = explicit_rates(len(frames))
        settings = dict(
            n_components=n_components,
            learning_rate=0.05,
            background_ratio=0.7,
            match_sigma=2.5,
            init_var=900.0,
            min_var=16.0,
            init_weight=0.05,
            rho=rho,
            covariance_type=covariance_type,
            warmup=warmup,
        )
        counters: dict = {}
        ref_masks, ref = reference_mog(frames, learning_rates=rates, counters=counters, **settings)
        # The sequence exercises every branch (the test cannot pass vacuously).
        n = frames.shape[0] * frames.shape[2] * frames.shape[3]
        assert counters["foreground"] >= 0.05 * n and counters["background"] >= 0.5 * n, counters
        # (The first frame accounts for one replacement and one re-sort per pixel.)
        n_pixels = frames.shape[2] * frames.shape[3]
        assert counters["replace"] >= n_pixels + 20 and counters["reorder"] >= n_pixels + 20, counters
        assert counters["match"] >= 0.5 * n, counters
        assert counters["infer"] == 4 * n_pixels, counters  # 4 frames at rate 0

        assert_module_equals(ref_masks, ref, torch.from_numpy(frames), rates, device, **settings)
        assert ref["frames_seen"] == len(frames) - 4

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_float_frames_and_apply_equal_reference(self, covariance_type):
        frames = random_sequence(7, 3)
        masks_ref, ref = reference_mog(frames, learning_rate=0.05, covariance_type=covariance_type)
        model = BackgroundSubtractorMOG(
            learning_rate=0.05, covariance_type=covariance_type, state_dtype=torch.float64, compile=False
        )
        x = torch.from_numpy(frames).double() / 255
        labels = torch.stack([model.apply(f[None])[0, 0] for f in x])  # OpenCV's uint8 mask
        assert labels.dtype == torch.uint8 and set(labels.unique().tolist()) <= {0, 255}
        np.testing.assert_array_equal((labels == 255).numpy(), masks_ref)
        np.testing.assert_allclose(model.mean[0].numpy(), ref["mean"], rtol=1e-9, atol=1e-9)


class TestEdgeCases:
    """Hand-built one-pixel sequences that sit exactly on the specification's boundaries.

    Each is checked against the hand-computed result and module == reference.
    """

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    def test_match_is_strict(self, device, n_channels, covariance_type):
        # Frame 2 at rate 1: w = 1, rho = 1, var = max(0, 16) = 16 exactly; the threshold is then
        # 6.25 C 16 = 100 C: a jump of 10 in every channel (d2 = 100 C) does not match, 9 does.
        masks, st = compare(
            [100, 100, 110, 109, 110], [None, 1.0, 0.0, 0.0, 0.1], device, n_channels, covariance_type=covariance_type
        )
        assert masks == [False, False, True, False, True]
        assert st["variance"][0].ravel().tolist() == [16.0] * (1 if covariance_type == "spherical" else n_channels)

    @pytest.mark.parametrize("background_ratio, foreground", [(0.5, False), (0.4, True)])
    def test_inclusive_background_and_stable_sort(self, device, background_ratio, foreground):
        # K = 2, init_weight = 0.5: frame 2 misses, w = [(1 - 0.5) * 1, 0.5] / 1 = [0.5, 0.5] and both
        # variances are 900: equal keys keep their order (the new component stays second), and its
        # exclusive cumulative weight 0.5 is background for T = 0.5 (<=), foreground for T = 0.4.
        masks, st = compare(
            [100, 200], [None, 0.5], device, n_components=2, init_weight=0.5, background_ratio=background_ratio
        )
        assert masks == [False, foreground]
        assert st["weight"].ravel().tolist() == [0.5, 0.5]
        assert st["mean"].ravel().tolist() == [100.0, 200.0]

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_paper_rho_clamped_to_one(self, device, covariance_type):
        # init_var = min_var = 0.01: eta = (2 pi 0.01)^-1/2 exp(-0.1^2 / 0.02) = 2.42, rho = 0.5 * 2.42
        # is clamped to 1, so the mean jumps onto x (unclamped it would overshoot to 100.121).
        masks, st = compare(
            [100.0, 100.0, 100.1],
            [None, 0.5, 0.5],
            device,
            rho="paper",
            init_var=0.01,
            min_var=0.01,
            covariance_type=covariance_type,
        )
        assert masks == [False, False, False]
        assert st["mean"][0, 0, 0, 0] == pytest.approx(100.1, abs=1e-9)

    def test_zero_weight_component_never_matches(self, device):
        # The fresh components have mean 0 and weight 0: x = 0 must not match them. Frame 2 (a = 1/2)
        # misses, the last component becomes x: w = [0.5, 0, 0.05] / 0.55, sorted to [0, 2, 1].
        # Frame 3 (a = 1/3) matches it: w = [2/3 w0, 2/3 w1 + 1/3, 0], and its key overtakes.
        masks, st = compare([100, 0, 0], [None, None, None], device, learning_rate=0.05)
        assert masks == [False, True, False]
        w2 = [0.5 / 0.55, 0.05 / 0.55]
        expected = [(1 - 1 / 3) * w2[1] + 1 / 3, (1 - 1 / 3) * w2[0], 0.0]
        np.testing.assert_allclose(st["weight"][:, 0, 0], expected, rtol=1e-12)
        np.testing.assert_allclose(st["mean"][:, 0, 0, 0], [0.0, 100.0, 0.0])


USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpp_wrapper_releases_the_gil() -> bool:
    """Whether this torch's Inductor C++ wrapper (JIT) drops the GIL around the kernels."""
    try:
        import inspect

        from torch._inductor.codegen import cpp_wrapper_cpu

        return "gil_scoped_release" in inspect.getsource(cpp_wrapper_cpu)
    except Exception:  # noqa: BLE001 - no source, another layout: assume not
        return False


# ----------------------------------------------------------------------------------------
# Compiled == eager
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
class TestCompiled:
    @pytest.mark.parametrize(
        "covariance_type, rho", [("diag", "inverse_weight"), ("spherical", "paper")], ids=["diag", "spherical-paper"]
    )
    def test_compiled_equals_eager(self, covariance_type, rho):
        frames, _ = moving_scene(n_frames=30, height=32, width=40, seed=3, start=3)
        clip = torch.from_numpy(frames)
        settings = dict(n_components=3, learning_rate=0.02, covariance_type=covariance_type, rho=rho)
        eager = BackgroundSubtractorMOG(**settings, compile=False)
        compiled = BackgroundSubtractorMOG(**settings, compile=True)
        m_eager, m_compiled = eager.process(clip), compiled.process(clip)
        assert m_eager.float().mean() > 0.05  # objects, misses and replacements happen
        agreement = (m_eager == m_compiled).float().mean().item()
        assert agreement >= 0.999, f"compiled vs eager masks agree on {agreement:.5%} of pixels"
        assert int(compiled.frames_seen) == int(eager.frames_seen) == 30
        assert_state_close(state_of(compiled), state_of(eager), rtol=1e-5, atol=1e-4)
        # Inference only and an explicit rate go through the same paths.
        assert torch.equal(compiled(clip[-1:], learning_rate=0), eager(clip[-1:], learning_rate=0))
        assert int(compiled.frames_seen) == 30
        agreement = (compiled(clip[-2:-1], learning_rate=0.3) == eager(clip[-2:-1], learning_rate=0.3)).float().mean()
        assert agreement >= 0.999
        assert_state_close(state_of(compiled), state_of(eager), rtol=1e-5, atol=1e-4)

    def test_many_configurations_stay_compiled(self):
        # Dynamo allows `recompile_limit` graphs per code object; with one compiled function
        # for every configuration, the third configuration here would fail (compile=True raises).
        frames = torch.randint(0, 256, (2, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        with torch._dynamo.config.patch(recompile_limit=2):
            for n_components, channels in [(2, 1), (2, 3), (4, 1)]:
                clip = frames[:, :channels]
                compiled = BackgroundSubtractorMOG(n_components=n_components, learning_rate=0.2, compile=True)
                eager = BackgroundSubtractorMOG(n_components=n_components, learning_rate=0.2, compile=False)
                assert torch.equal(compiled.process(clip), eager.process(clip))
                assert_state_close(state_of(compiled), state_of(eager), rtol=1e-5, atol=1e-4)

    @pytest.mark.skipif(USABLE_CORES < 2, reason="needs 2 cores: the ticking thread must not wait for the model's")
    @pytest.mark.skipif(not cpp_wrapper_releases_the_gil(), reason="this torch's C++ wrapper keeps the GIL")
    def test_cpu_step_releases_the_gil(self, monkeypatch):
        # A thread that wakes every 0.2 ms and needs the GIL for a moment (like a decoder's
        # Python glue) must keep running while the model steps. Measured on 2 cores with
        # 320x240 RGB K = 3: 0.90-0.93 of its idle rate with the C++ wrapper, 0.12-0.13 with
        # Inductor's Python wrapper, which runs the fused kernel with the GIL held.
        frames = torch.randint(0, 256, (1, 3, 240, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        model = BackgroundSubtractorMOG(compile=True)

        def ticks_per_second(work) -> float:
            ticks, stop = 0, threading.Event()

            def tick() -> None:
                nonlocal ticks
                while not stop.is_set():
                    time.sleep(0.0002)
                    ticks += 1

            thread = threading.Thread(target=tick)
            thread.start()
            start = time.perf_counter()
            work()
            elapsed = time.perf_counter() - start
            stop.set()
            thread.join()
            return ticks / elapsed

        threads = torch.get_num_threads()
        # One OpenMP thread leaves a core to the ticking thread; Inductor bakes the thread
        # count into the kernel, so compile afresh (not a step cached by an earlier test).
        torch.set_num_threads(1)
        monkeypatch.setattr(background_module, "_compiled_steps", {})
        try:
            model(frames), model(frames)  # compile outside the measurement
            idle = ticks_per_second(lambda: time.sleep(0.2))
            busy = ticks_per_second(lambda: [model(frames) for _ in range(60)])
        finally:
            torch.set_num_threads(threads)
        assert busy > 0.5 * idle, f"a GIL-needing thread ran at {busy / idle:.0%} of its idle rate beside the model"

    def test_cpp_wrapper_failure_falls_back_to_the_python_wrapper(self, monkeypatch):
        compiled_step = background_module._get_compiled_step
        calls = []

        def failing_cpp_wrapper(config, cpp_wrapper=False):  # noqa: ANN001, ANN202
            calls.append(cpp_wrapper)
            if cpp_wrapper:
                raise RuntimeError("no C++ wrapper here")
            return compiled_step(config, cpp_wrapper)

        monkeypatch.setattr(background_module, "_get_compiled_step", failing_cpp_wrapper)
        monkeypatch.setattr(background_module, "_cpp_wrapper_failures", set())
        clip = torch.randint(0, 256, (4, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        compiled = BackgroundSubtractorMOG(n_components=2, learning_rate=0.2, compile=True)
        eager = BackgroundSubtractorMOG(n_components=2, learning_rate=0.2, compile=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the Python wrapper is still compiled: nothing to warn about
            assert torch.equal(compiled.process(clip), eager.process(clip))
        assert calls == [True, False, False, False, False]  # tried once, then remembered
        first = BackgroundSubtractorMOG(n_components=2, compile=True)(clip[:1])
        assert torch.equal(first, BackgroundSubtractorMOG(n_components=2, compile=False)(clip[:1]))
        assert calls[5:] == [False]  # remembered for every module with this configuration
        assert_state_close(state_of(compiled), state_of(eager), rtol=1e-5, atol=1e-4)

    @pytest.mark.parametrize("streams", [1, 2])
    def test_one_compile_per_configuration(self, monkeypatch, streams):
        # A fresh state, the step's own output and a loaded state must look alike to dynamo's
        # guards (strides, even of size-1 dimensions; views or not): a B = 1 state with
        # batch-major strides recompiled the step on the second frame (4.8 s, cold cache).
        from torch._dynamo.utils import counters

        monkeypatch.setattr(background_module, "_compiled_steps", {})
        monkeypatch.setattr(background_module, "_cpp_wrapper_failures", set())
        clip = torch.randint(
            0, 256, (5, streams, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
        )
        graphs = counters["stats"]["unique_graphs"]
        first = BackgroundSubtractorMOG(compile=True)
        for frame in clip[:3]:
            first(frame)
        resumed = BackgroundSubtractorMOG(compile=True)
        resumed.load_state_dict(first.state_dict())
        for frame in clip[3:]:
            resumed(frame)
        assert int(resumed.frames_seen) == 5
        assert counters["stats"]["unique_graphs"] - graphs == 1
        assert not background_module._cpp_wrapper_failures

    def test_both_wrappers_failing_names_both_errors(self, monkeypatch):
        def failing(config, cpp_wrapper=False):  # noqa: ANN001, ANN202
            def step(*args):  # noqa: ANN002, ANN202
                raise RuntimeError("C++ wrapper broken" if cpp_wrapper else "Python wrapper broken")

            return step

        monkeypatch.setattr(background_module, "_get_compiled_step", failing)
        monkeypatch.setattr(background_module, "_cpp_wrapper_failures", set())
        clip = torch.randint(0, 256, (3, 1, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        with pytest.raises(RuntimeError, match="Python wrapper broken") as info:
            BackgroundSubtractorMOG(compile=True)(clip[:1])
        assert any("C++ wrapper broken" in note for note in getattr(info.value, "__notes__", []))
        # compile=None whose ahead-of-time package failed too: warns, runs eagerly, same masks
        from torchgmm import _aot

        monkeypatch.setattr(_aot, "run_ahead_of_time", lambda *args: None)
        fallback = BackgroundSubtractorMOG()
        with pytest.warns(RuntimeWarning, match="running eagerly"):
            masks = fallback.process(clip)
        assert torch.equal(masks, BackgroundSubtractorMOG(compile=False).process(clip))


# ----------------------------------------------------------------------------------------
# OpenCV contrib bgsegm MOG
# ----------------------------------------------------------------------------------------
class TestOpenCV:
    """Measured agreement: RGB 99.84% (K=3), 99.79% (K=5); grey 99.94% (K=3), 99.75% (K=5).

    The differing pixels are almost all in the flickering patch (a bimodal background) and on
    the object that stops: OpenCV updates the weights as ``w_hit += a (1 - w_hit)`` with the
    others unchanged, moves the matched component upwards only and ranks on the old weight,
    so the second mode and the stopped object become background a few frames apart.
    """

    @pytest.mark.parametrize("n_components", [3, 5])
    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_masks_agree_with_opencv(self, n_channels, n_components):
        cv2 = pytest.importorskip("cv2")
        if not hasattr(cv2, "bgsegm"):
            pytest.skip("needs opencv-contrib (cv2.bgsegm)")
        frames, _ = moving_scene(n_channels=n_channels, seed=n_components)
        sub = cv2.bgsegm.createBackgroundSubtractorMOG(
            history=200, nmixtures=n_components, backgroundRatio=0.7, noiseSigma=0
        )
        images = frames.transpose(0, 2, 3, 1) if n_channels == 3 else frames[:, 0]
        cv_masks = np.stack([sub.apply(np.ascontiguousarray(im)) for im in images]) > 0
        model = BackgroundSubtractorMOG(n_components=n_components, **OPENCV_SETTINGS, compile=False)
        masks = model.process(torch.from_numpy(frames))[:, 0].numpy()
        agreement = (masks == cv_masks).mean()
        assert cv_masks.mean() > 0.02  # the comparison is not about an empty mask
        assert agreement >= 0.997, (  # measured 99.75-99.94% (class docstring); the README quotes it
            f"masks agree with OpenCV bgsegm MOG on {agreement:.4%} of pixels (foreground: ours "
            f"{masks.mean():.3%}, OpenCV {cv_masks.mean():.3%}); differing pixels per frame: "
            f"{(masks != cv_masks).sum(axis=(1, 2)).tolist()}"
        )


# ----------------------------------------------------------------------------------------
# Behaviour on synthetic scenes
# ----------------------------------------------------------------------------------------
def _noisy(base: torch.Tensor, n_frames: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    x = base[None] + sigma * torch.randn((n_frames, *base.shape), generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8)


class TestBehaviour:
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    def test_static_noisy_scene(self, n_channels, covariance_type):
        g = torch.Generator().manual_seed(n_channels)
        base = 40 + 180 * torch.rand(n_channels, 48, 64, generator=g)
        frames = _noisy(base, 200, 3.0, g)
        masks = BackgroundSubtractorMOG(covariance_type=covariance_type, compile=False).process(frames)
        fraction = masks[50:].float().mean().item()
        # Noise sigma 3, variance floor 36: |x - mu| < 2.5 * 6 is a 5-sigma test at least.
        assert fraction < 0.001, f"foreground on a static scene after warm-up: {fraction:.4%}"

    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    def test_moving_square_detected(self, n_channels):
        g = torch.Generator().manual_seed(10 + n_channels)
        h, w, n_frames, size = 40, 48, 120, 10
        base = 50 + 60 * torch.rand(n_channels, h, w, generator=g)
        frames = _noisy(base, n_frames, 3.0, g)
        truth = torch.zeros(n_frames, h, w, dtype=torch.bool)
        for t in range(60, n_frames):  # enters at frame 60, moves 1.5 px per frame diagonally-ish
            y, x = int(2 + 0.4 * (t - 60)), int(1.5 * (t - 60)) % (w - size)
            truth[t, y : y + size, x : x + size] = True
        obj = (200 + 3 * torch.randn(n_frames, n_channels, h, w, generator=g)).round().to(torch.uint8)
        frames = torch.where(truth[:, None], obj, frames)
        masks = BackgroundSubtractorMOG(learning_rate=0.01, compile=False).process(frames)[:, 0]
        tp = (masks & truth)[60:].sum().item()
        recall = tp / truth[60:].sum().item()
        precision = tp / max(masks[60:].sum().item(), 1)
        assert recall > 0.95, f"recall {recall:.4f}"
        assert precision > 0.9, f"precision {precision:.4f}"

    @pytest.mark.parametrize("background_ratio", [0.5, 0.7])
    def test_stopped_object_absorbed(self, background_ratio):
        """An object that stops becomes background once the old background's weight <= T.

        On the object's first frame at a pixel nothing matches: every weight decays by
        (1 - a), the last component becomes the object with weight init_weight, and the
        weights are renormalised, so the background keeps w1 = (1 - a) w0 / ((1 - a) (1 -
        w_last) + init_weight). From then on the object's component matches every frame and
        the background decays as w1 (1 - a)^j; the object (rank 1 behind it: its variance is
        still much larger) is background as soon as w1 (1 - a)^j <= T. So the object is
        foreground for n = ceil(log(T / w1) / log(1 - a)) frames. For T = 0.5 and w1 ~ 1 this
        is the issue's log(1 - T) / log(1 - a).
        """
        a, init_weight, t_stop, n_frames = 0.02, 0.05, 100, 160
        g = torch.Generator().manual_seed(5)
        h, w = 20, 30
        frames = _noisy(torch.full((1, h, w), 100.0), n_frames, 1.0, g)
        obj = _noisy(torch.full((1, 8, 8), 180.0), n_frames, 1.0, g)
        for t in range(t_stop - 5, n_frames):  # slides in 4 px per frame, stops at t_stop
            x = 4 * (min(t, t_stop) - t_stop + 5)
            frames[t, :, 6:14, x : x + 8] = obj[t]
        model = BackgroundSubtractorMOG(
            n_components=3, learning_rate=a, background_ratio=background_ratio, init_weight=init_weight, compile=False
        )
        model.process(frames[:t_stop])
        # Pixels first covered at t_stop: the leading 4 columns (the square covers 16..23 before).
        cols = slice(24, 28)
        w0 = model.weight[0, 0, 6:14, cols].double()
        w_last = model.weight[0, -1, 6:14, cols].double()
        w1 = (1 - a) * w0 / ((1 - a) * (1 - w_last) + init_weight)
        derived = torch.log(background_ratio / w1) / math.log(1 - a)  # (8, 4) per pixel
        masks = model.process(frames[t_stop:])[:, 0, 6:14, cols]
        assert masks[0].all()
        first_background = (~masks).int().argmax(0).double()  # frames of foreground
        assert (~masks).any(0).all(), "the object was never absorbed"
        assert (first_background - derived).abs().max() <= 1.0  # n = ceil(derived)
        measured, predicted = first_background.median().item(), derived.median().item()
        assert abs(measured - predicted) <= 0.1 * predicted, (measured, predicted)
        if background_ratio == 0.5:
            issue = math.log(1 - background_ratio) / math.log(1 - a)
            assert abs(measured - issue) <= 0.1 * issue, (measured, issue)
        # Once absorbed it stays background.
        assert not masks[int(first_background.max()) :].any()

    def test_bimodal_pixel_learned_as_background(self):
        g = torch.Generator().manual_seed(2)
        n_frames = 1000
        choice = torch.rand(n_frames, 1, 32, 32, generator=g) < 0.4
        x = torch.where(choice, 160.0, 80.0) + 3 * torch.randn(n_frames, 1, 32, 32, generator=g)
        frames = x.round().clamp(0, 255).to(torch.uint8)
        masks = BackgroundSubtractorMOG(compile=False).process(frames)  # T = 0.65 > 0.6: both modes
        early, late = masks[:20].float().mean().item(), masks[600:].float().mean().item()
        assert early > 0.05  # the second mode is foreground until it has weight
        assert late < 0.005, f"foreground on a bimodal background after learning: {late:.4%}"

    def test_learning_rate_zero_freezes(self):
        frames = torch.from_numpy(random_sequence(3, 3, n_frames=20))
        model = BackgroundSubtractorMOG(compile=False)
        model.process(frames[:15])
        before = state_of(model)
        masks = torch.stack([model(f[None], learning_rate=0) for f in frames[15:]])
        assert_state_close(state_of(model), before, rtol=0, atol=0)
        assert int(model.frames_seen) == 15
        # ... and classifies as the reference's inference does.
        ref_masks, _ = reference_mog(frames.numpy(), learning_rates=[None] * 15 + [0.0] * 5)
        np.testing.assert_array_equal(masks[:, 0, 0].numpy(), ref_masks[15:])


# ----------------------------------------------------------------------------------------
# Module API and state
# ----------------------------------------------------------------------------------------
class TestModule:
    def test_frames_that_require_grad_keep_no_graph(self):
        g = torch.Generator().manual_seed(0)
        clip = torch.rand((6, 1, 3, 8, 8), generator=g) * 0.5
        plain, tracked = BackgroundSubtractorMOG(compile=False), BackgroundSubtractorMOG(compile=False)
        for frame in clip:
            assert torch.equal(tracked(frame.clone().requires_grad_(True)), plain(frame))
        assert all(t.grad_fn is None and not t.requires_grad for t in tracked.state_dict().values())
        copy.deepcopy(tracked)  # graph nodes (one per frame, kept alive by the state) cannot be copied

    def test_repr_lists_the_settings(self):
        text = repr(BackgroundSubtractorMOG(match_sigma=3.0, min_var=25.0, state_dtype=torch.float64))
        assert "match_sigma=3.0" in text and "min_var=25.0" in text and "state_dtype=torch.float64" in text

    def test_smoke_shapes(self):
        model = BackgroundSubtractorMOG(n_components=4, covariance_type="diag", compile=False)
        masks = model(torch.zeros(2, 3, 5, 7, dtype=torch.uint8))
        assert masks.shape == (2, 1, 5, 7) and masks.dtype == torch.bool
        assert model.weight.shape == (2, 4, 5, 7)
        assert model.mean.shape == (2, 4, 3, 5, 7)
        assert model.variance.shape == (2, 4, 3, 5, 7)
        assert model.frames_seen.dtype == torch.int64 and model.frames_seen.shape == ()
        spherical = BackgroundSubtractorMOG(n_components=2, compile=False)
        spherical(torch.zeros(1, 1, 5, 7, dtype=torch.uint8))
        assert spherical.variance.shape == (1, 2, 5, 7)

    def test_settings_changed_between_frames_take_effect(self, device):
        # The module caches its settings as tensors; a changed attribute must reach the update.
        clip = torch.from_numpy(random_sequence(4, 3, n_frames=24, height=9, width=8)).to(device)
        changed = BackgroundSubtractorMOG(learning_rate=0.1, compile=False).to(device)
        changed.process(clip[:12])
        fresh = BackgroundSubtractorMOG(
            learning_rate=0.1, background_ratio=0.95, match_sigma=1.5, min_var=4.0, compile=False
        ).to(device)
        fresh(clip[:1])  # shape the state, then take the other model's
        fresh.load_state_dict(changed.state_dict())
        changed.background_ratio, changed.match_sigma, changed.min_var = 0.95, 1.5, 4.0
        masks_changed, masks_fresh = changed.process(clip[12:]), fresh.process(clip[12:])
        assert torch.equal(masks_changed, masks_fresh)
        assert torch.equal(changed.variance, fresh.variance)
        unchanged = BackgroundSubtractorMOG(learning_rate=0.1, compile=False).to(device)
        unchanged.process(clip[:12])
        assert not torch.equal(unchanged.process(clip[12:]), masks_fresh)  # the settings matter here

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_batch_equals_streams_alone(self, device, covariance_type):
        streams = [torch.from_numpy(random_sequence(20 + s, 3, n_frames=30, height=7, width=6)) for s in range(3)]
        settings = dict(learning_rate=0.05, covariance_type=covariance_type, compile=False)
        batched = BackgroundSubtractorMOG(**settings).to(device)
        masks = run_frames(batched, torch.stack(streams, 1).to(device))  # (T, 3, H, W)
        for b, clip in enumerate(streams):
            alone = BackgroundSubtractorMOG(**settings).to(device)
            assert torch.equal(alone.process(clip.to(device))[:, 0], masks[:, b])
            for name in ("weight", "mean", "variance"):
                torch.testing.assert_close(getattr(alone, name)[0], getattr(batched, name)[b], rtol=1e-6, atol=1e-5)

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_state_stays_component_major(self, device, covariance_type):
        # The fused update is one loop only when each (B, H, W) plane of the state is
        # contiguous (measured 3x slower per frame at B = 2 otherwise): the layout must survive
        # updates, .to(), load_state_dict of batch-major state and dropping streams.
        def component_major_state(model):
            return all(getattr(model, n).movedim(0, -3).is_contiguous() for n in ("weight", "mean", "variance"))

        frames = torch.from_numpy(random_sequence(3, 3, n_frames=6)).to(device)
        clip = torch.stack([frames, frames.flip(-1), frames.flip(-2)], 1)  # (T, B=3, C, H, W)
        model = BackgroundSubtractorMOG(covariance_type=covariance_type, compile=False).to(device)
        run_frames(model, clip[:3])
        assert component_major_state(model)
        batch_major = {k: v.contiguous() for k, v in model.state_dict().items()}
        assert not batch_major["weight"].movedim(0, -3).is_contiguous()
        fresh = BackgroundSubtractorMOG(covariance_type=covariance_type, compile=False)
        fresh.load_state_dict(batch_major)
        fresh = fresh.to(device)
        assert component_major_state(fresh)
        assert torch.equal(run_frames(fresh, clip[3:]), run_frames(model, clip[3:]))
        assert component_major_state(fresh)
        fresh.keep_streams([0, 2])
        assert component_major_state(fresh) and fresh.weight.shape[0] == 2
        torch.testing.assert_close(fresh.mean, model.mean[[0, 2]], rtol=0, atol=0)

    def test_component_major_keeps_values(self):
        state = torch.randn(4, 3, 2, 5, 6)
        moved = component_major(state)
        assert torch.equal(moved, state) and moved.movedim(0, -3).is_contiguous()
        assert component_major(moved) is moved  # already laid out: no copy
        single = torch.randn(1, 3, 5, 6)
        same = component_major(single)  # B = 1: the same memory, the update's strides
        assert same.data_ptr() == single.data_ptr() and torch.equal(same, single)
        assert same.stride() == (30, 30, 6, 1) and single.stride() == (90, 30, 6, 1)

    def test_non_contiguous_frames(self):
        frames = torch.from_numpy(random_sequence(4, 3, n_frames=15))
        nhwc = frames.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last view
        assert not nhwc.is_contiguous()
        a, b = BackgroundSubtractorMOG(compile=False), BackgroundSubtractorMOG(compile=False)
        assert torch.equal(a.process(frames), b.process(nhwc))

    def test_process_equals_forward(self):
        clip = torch.from_numpy(random_sequence(5, 1, n_frames=25))
        a, b = BackgroundSubtractorMOG(compile=False), BackgroundSubtractorMOG(compile=False)
        masks = a.process(clip)
        assert masks.shape == (25, 1, 6, 5) and masks.dtype == torch.bool
        assert torch.equal(masks, torch.cat([b(f[None]) for f in clip]))
        assert_state_close(state_of(a), state_of(b), rtol=0, atol=0)
        empty = a.process(clip[:0])
        assert empty.shape == (0, 1, 6, 5) and empty.dtype == torch.bool
        assert_state_close(state_of(a), state_of(b), rtol=0, atol=0)  # nothing learned

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_state_dict_resume_in_fresh_module(self, covariance_type):
        clip = torch.from_numpy(random_sequence(6, 3, n_frames=40))
        settings = dict(learning_rate=0.05, covariance_type=covariance_type, compile=False)
        whole = BackgroundSubtractorMOG(**settings)
        expected = whole.process(clip)
        first = BackgroundSubtractorMOG(**settings)
        first.process(clip[:17])
        saved = copy.deepcopy(first.state_dict())
        fresh = BackgroundSubtractorMOG(**settings)
        fresh.load_state_dict(saved)
        assert int(fresh.frames_seen) == 17
        assert torch.equal(torch.cat([expected[:17], fresh.process(clip[17:])]), expected)
        assert_state_close(state_of(fresh), state_of(whole), rtol=0, atol=0)

    def test_deepcopy_continues_identically(self):
        clip = torch.from_numpy(random_sequence(8, 3, n_frames=30))
        model = BackgroundSubtractorMOG(learning_rate=0.05, compile=False)
        model.process(clip[:10])
        twin = copy.deepcopy(model)
        assert torch.equal(model.process(clip[10:]), twin.process(clip[10:]))
        assert_state_close(state_of(model), state_of(twin), rtol=0, atol=0)

    def test_to_dtype_and_device(self, device):
        clip = torch.from_numpy(random_sequence(9, 3, n_frames=30))
        model = BackgroundSubtractorMOG(learning_rate=0.05, compile=False)
        model.process(clip[:10])
        model = model.to(device=device, dtype=torch.float64)
        assert model.weight.dtype == model.mean.dtype == model.variance.dtype == torch.float64
        assert model.frames_seen.dtype == torch.int64 and int(model.frames_seen) == 10
        assert model.weight.device.type == device.type
        masks = model.process(clip[10:].to(device))
        assert masks.device.type == device.type and int(model.frames_seen) == 30
        # Continuing in float64 from the float32 state stays close to a float32 run.
        ref = BackgroundSubtractorMOG(learning_rate=0.05, compile=False)
        agreement = (ref.process(clip)[10:] == masks.cpu()).float().mean().item()
        assert agreement > 0.99, agreement

    def test_reset(self):
        model = BackgroundSubtractorMOG(n_components=2, compile=False).to(torch.float64)
        model.process(torch.from_numpy(random_sequence(10, 3, n_frames=10)))
        model.reset()
        assert int(model.frames_seen) == 0 and model.weight.dtype == torch.float64
        # The next frame initialises, whatever its size.
        frame = torch.full((2, 1, 4, 3), 77, dtype=torch.uint8)
        assert not model(frame).any()
        assert model.weight.shape == (2, 2, 4, 3) and int(model.frames_seen) == 1
        fresh = BackgroundSubtractorMOG(n_components=2, compile=False).to(torch.float64)
        fresh(frame)
        assert_state_close(state_of(model), state_of(fresh), rtol=0, atol=0)

    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    def test_background_image(self, n_channels):
        g = torch.Generator().manual_seed(0)
        scene = (255 * torch.rand(2, n_channels, 12, 16, generator=g)).round()
        model = BackgroundSubtractorMOG(compile=False)
        with pytest.raises(RuntimeError, match="frame"):
            model.background_image()
        for _ in range(60):
            x = scene + 2 * torch.randn(scene.shape, generator=g)
            model(x.round().clamp(0, 255).to(torch.uint8))
        img = model.background_image()
        assert img.shape == (2, n_channels, 12, 16) and img.dtype == torch.uint8
        assert (img.float() - scene).abs().max().item() <= 1.0

    def test_float_frames_equal_uint8(self):
        clip = torch.from_numpy(random_sequence(11, 3, n_frames=40))
        a, b = BackgroundSubtractorMOG(compile=False), BackgroundSubtractorMOG(compile=False)
        assert torch.equal(a.process(clip), b.process(clip.float() / 255))
        assert_state_close(state_of(a), state_of(b), rtol=1e-6, atol=1e-5)

    @pytest.mark.parametrize("state_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
    def test_low_precision_state(self, state_dtype):
        frames, _ = moving_scene(n_frames=200, height=48, width=64, seed=1)
        clip = torch.from_numpy(frames)
        ref = BackgroundSubtractorMOG(compile=False).process(clip)
        model = BackgroundSubtractorMOG(state_dtype=state_dtype, compile=False)
        masks = model.process(clip)
        assert model.weight.dtype == model.mean.dtype == model.variance.dtype == state_dtype
        agreement = (masks == ref).float().mean().item()
        # Measured: float16 99.995%, bfloat16 99.974% (200 frames, 48 x 64 RGB, moving objects).
        assert agreement >= 0.99, f"{state_dtype} masks agree with float32 on {agreement:.4%} of pixels"

    def test_functions_equal_module(self):
        from torchgmm.background import mog_foreground, mog_update

        clip = torch.from_numpy(random_sequence(12, 3, n_frames=20))
        model = BackgroundSubtractorMOG(learning_rate=0.05, warmup=False, state_dtype=torch.float64, compile=False)
        model.process(clip[:19])
        w, m, v = model.weight.clone(), model.mean.clone(), model.variance.clone()
        frozen = mog_foreground(clip[19:], w, m, v, background_ratio=0.7, match_sigma=2.5)
        assert torch.equal(frozen, model(clip[19:], learning_rate=0))
        # The rate as a tensor, as the module passes it (a Python float ``a`` makes ``a / w``
        # a reciprocal times ``a`` in torch, one ulp away).
        mask, w2, m2, v2 = mog_update(clip[19:], w, m, v, torch.tensor(0.05, dtype=torch.float64))
        assert torch.equal(mask, model(clip[19:]))
        assert torch.equal(w2, model.weight) and torch.equal(m2, model.mean) and torch.equal(v2, model.variance)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------
class TestErrors:
    def test_frame_rank(self):
        model = BackgroundSubtractorMOG(compile=False)
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            model(torch.zeros(3, 5, 5, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            model(torch.zeros(1, 1, 3, 5, 5, dtype=torch.uint8))

    @pytest.mark.parametrize("n_channels", [2, 4])
    def test_channels(self, n_channels):
        with pytest.raises(ValueError, match="frames"):
            BackgroundSubtractorMOG(compile=False)(torch.zeros(1, n_channels, 5, 5, dtype=torch.uint8))

    @pytest.mark.parametrize(
        "shape", [(1, 3, 5, 6), (1, 3, 6, 5), (1, 1, 5, 5), (2, 3, 5, 5)], ids=["width", "height", "channels", "batch"]
    )
    def test_frame_does_not_fit_state(self, shape):
        model = BackgroundSubtractorMOG(compile=False)
        model(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))
        with pytest.raises(ValueError, match="reset") as caught:
            model(torch.zeros(shape, dtype=torch.uint8))
        assert "process()" in str(caught.value)  # the usual cause: a clip passed as B streams
        assert int(model.frames_seen) == 1

    def test_module_apply_of_a_parent_reaches_children(self):
        """``nn.Sequential(..., model).apply(init_fn)`` calls ``model.apply(init_fn)``: the
        function must be applied, not taken for frames (OpenCV's ``apply`` shares the name)."""
        model = BackgroundSubtractorMOG(compile=False)
        head = nn.Conv2d(1, 2, 1)
        seen = []
        pipeline = nn.Sequential(model, head)
        assert pipeline.apply(seen.append) is pipeline
        assert seen == [model, head, pipeline]  # children first, as nn.Module.apply does
        masks = model.apply(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))  # OpenCV's meaning
        assert masks.shape == (2, 1, 4, 4) and masks.dtype == torch.uint8 and int(model.frames_seen) == 1

    def test_nan_frame(self):
        model = BackgroundSubtractorMOG(compile=False)
        frame = torch.full((1, 1, 4, 4), 0.5)
        model(frame)
        frame[0, 0, 1, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            model(frame)
        assert int(model.frames_seen) == 1

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(n_components=0), "n_components"),
            (dict(background_ratio=0.0), "background_ratio"),
            (dict(background_ratio=1.5), "background_ratio"),
            (dict(learning_rate=-0.1), "learning_rate"),
            (dict(rho="sqrt"), "rho"),
            (dict(covariance_type="full"), "covariance_type"),
            (dict(background_ratio=float("nan")), "background_ratio"),
            (dict(min_var=float("inf"), init_var=float("inf")), "min_var"),
            (dict(init_var=float("inf")), "init_var"),
            (dict(match_sigma=float("nan")), "match_sigma"),
            (dict(init_weight=0.0), "init_weight"),
        ],
    )
    def test_constructor(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            BackgroundSubtractorMOG(**kwargs)

    def test_constructor_type(self):
        with pytest.raises(TypeError, match="`background_ratio` must be a real number, got str"):
            BackgroundSubtractorMOG(background_ratio="0.5")

    def test_float_frames_on_the_255_scale(self):
        # 0..255 values as float would be scaled by 255 again: every mean far out of range
        model = BackgroundSubtractorMOG(compile=False)
        with pytest.raises(ValueError, match=r"\[0, 1\] scale, got values in \[0, 200\]"):
            model(torch.tensor([0.0, 200.0]).view(1, 1, 1, 2))
        assert not model.is_initialized
        with pytest.raises(ValueError, match=r"NaN or infinite value\(s\); clean or drop them before the model update"):
            model(torch.tensor([0.5, float("inf")]).view(1, 1, 1, 2))
        model(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2))  # the bounds themselves are fine

    @pytest.mark.parametrize(
        "name, value, match",
        [
            ("variance", float("nan"), "`variance` holds NaN"),
            ("variance", -1.0, "`variance` holds values <= 0"),
            ("weight", 2.0, r"`weight` holds values outside \[0, 1\]"),
            ("mean", float("inf"), "`mean` holds NaN or infinite"),
        ],
    )
    def test_load_unusable_state(self, name, value, match):
        model = BackgroundSubtractorMOG(compile=False)
        model(torch.full((1, 1, 2, 2), 50, dtype=torch.uint8))
        state = model.state_dict()
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
        fresh = BackgroundSubtractorMOG(compile=False)
        with pytest.raises(RuntimeError, match=match):
            fresh.load_state_dict(state)
        assert not fresh.is_initialized

    def test_negative_learning_rate_in_forward(self):
        model = BackgroundSubtractorMOG(compile=False)
        model(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
        with pytest.raises(ValueError, match="learning_rate"):
            model(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), learning_rate=-1.0)


def test_the_default_preset_is_the_modules_defaults():
    """One set of defaults: the CLI's ``default`` preset, the module's, the functional core's
    and the evaluation's."""
    from torchgmm.background import mog_foreground, mog_update
    from torchgmm.defaults import PRESETS
    from torchgmm.jobs.baselines import method_factories

    module = inspect.signature(BackgroundSubtractorMOG).parameters
    assert {k: module[k].default for k in PRESETS["default"]} == PRESETS["default"]
    update = inspect.signature(mog_update).parameters
    shared = {k: v for k, v in PRESETS["default"].items() if k in update and k != "learning_rate"}  # required there
    assert len(shared) == 4 and {k: update[k].default for k in shared} == shared
    assert (
        inspect.signature(mog_foreground).parameters["background_ratio"].default
        == PRESETS["default"]["background_ratio"]
    )
    matched = ("n_components", "learning_rate", "background_ratio")  # the evaluation's shared settings
    factories = inspect.signature(method_factories).parameters
    assert {k: factories[k].default for k in matched} == {k: PRESETS["default"][k] for k in matched}
