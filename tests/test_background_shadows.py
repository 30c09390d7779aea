"""Shadow detection in the Stauffer-Grimson model (``BackgroundSubtractorMOG(detect_shadows=True)``).

References are independent of the implementation:

- a synthetic scene whose shadow pixels are known (a bright object moving over a textured
  background, casting a region of the background times 0.7 beside it, and a colour cast
  that is darker but of another chroma, which is not a shadow);
- ``reference_pixel_shadow`` below, a slow per-pixel loop in Python floats (float64) written
  from the definition (OpenCV's ``detectShadowGMM`` over this model's background set, the
  match test of the model as the distortion bound), run on the state that
  ``tests/reference_background.py`` (itself an independent reference) learns.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import torchgmm
from reference_background import fresh_state, reference_pixel_step
from torchgmm.background import BackgroundSubtractorMOG, mog_foreground, mog_shadow


# ----------------------------------------------------------------------------------------
# References and data
# ----------------------------------------------------------------------------------------
def reference_pixel_shadow(x, w, mu, var, *, background_ratio, match_sigma, shadow_threshold) -> bool:
    """Whether ``x`` is shadow-coloured on the state ``(w, mu, var)`` (rank order), from the definition.

    The background components are those with ``w > 0`` and an exclusive cumulative weight
    <= T, tried in rank order. For one of them: ``a = x.mu / |mu|^2``; darker when ``x.mu <=
    |mu|^2`` and ``x.mu >= tau |mu|^2`` (OpenCV's form of ``tau <= a <= 1``); same chroma
    when ``|a mu - x|^2 < lambda^2 C sigma2 a^2``, sigma2 the component's per-channel
    variance (its variance, or the mean of its channel variances). A background component
    with ``mu = 0`` ends the search (OpenCV: no division by zero). Sums in channel order.
    """
    n_channels = len(x)
    cum = 0.0
    for k in range(len(w)):
        if cum > background_ratio:  # past the background
            return False
        if w[k] > 0:
            numerator = x[0] * mu[k][0]
            denominator = mu[k][0] * mu[k][0]
            for c in range(1, n_channels):
                numerator = numerator + x[c] * mu[k][c]
                denominator = denominator + mu[k][c] * mu[k][c]
            if denominator == 0:
                return False
            a = numerator / denominator
            dist2a = (a * mu[k][0] - x[0]) * (a * mu[k][0] - x[0])
            for c in range(1, n_channels):
                dist2a = dist2a + (a * mu[k][c] - x[c]) * (a * mu[k][c] - x[c])
            sigma2 = var[k][0]
            for v in var[k][1:]:
                sigma2 = sigma2 + v
            sigma2 = sigma2 / len(var[k])
            bound = match_sigma * match_sigma * n_channels * sigma2 * a * a
            if numerator <= denominator and numerator >= shadow_threshold * denominator and dist2a < bound:
                return True
        cum = cum + w[k]
    return False


def reference_shadows(
    frames: np.ndarray,
    *,
    n_components=3,
    learning_rate=0.05,
    background_ratio=0.65,
    match_sigma=2.5,
    init_var=100.0,
    min_var=100.0,
    init_weight=0.05,
    rho="constant",
    covariance_type="spherical",
    shadow_threshold=0.5,
    shadow_match_sigma=None,
):
    """``(foreground, shadow)``, ``(T, H, W)`` bool each, pixel by pixel (warm-up schedule, rate > 0).

    The update is ``reference_pixel_step``; the shadow test runs on the state after it, the
    state whose weights gave the foreground decision.
    """
    n_frames, n_channels, height, width = frames.shape
    state = fresh_state(n_components, n_channels, height, width, init_var=init_var, covariance_type=covariance_type)
    settings = dict(
        background_ratio=background_ratio,
        match_sigma=match_sigma,
        init_var=init_var,
        min_var=min_var,
        init_weight=init_weight,
        rho=rho,
    )
    sigma = match_sigma if shadow_match_sigma is None else shadow_match_sigma
    pixels = {}
    for i in range(height):
        for j in range(width):
            w = [float(state["weight"][k, i, j]) for k in range(n_components)]
            mu = [[float(state["mean"][k, c, i, j]) for c in range(n_channels)] for k in range(n_components)]
            if covariance_type == "spherical":
                var = [[float(state["variance"][k, i, j])] for k in range(n_components)]
            else:
                var = [[float(state["variance"][k, c, i, j]) for c in range(n_channels)] for k in range(n_components)]
            pixels[i, j] = (w, mu, var)
    foreground = np.zeros((n_frames, height, width), dtype=bool)
    shadow = np.zeros_like(foreground)
    for t in range(n_frames):
        a = 1.0 if t == 0 else max(learning_rate, 1.0 / (t + 1))
        for (i, j), (w, mu, var) in pixels.items():
            x = [float(frames[t, c, i, j]) for c in range(n_channels)]
            fg, w, mu, var, _, _ = reference_pixel_step(x, w, mu, var, a, **settings)
            pixels[i, j] = (w, mu, var)
            is_shadow = fg and reference_pixel_shadow(
                x, w, mu, var, background_ratio=background_ratio, match_sigma=sigma, shadow_threshold=shadow_threshold
            )
            shadow[t, i, j] = is_shadow
            foreground[t, i, j] = fg and not is_shadow
    return foreground, shadow


def shadow_sequence(seed: int, n_channels: int, n_frames: int = 40, height: int = 6, width: int = 7) -> np.ndarray:
    """``(T, C, H, W)`` uint8 with many shadow candidates: noisy backgrounds, darkened copies of
    them (ratio 0.3..1.05, with and without a chroma shift), bright objects, permanent jumps."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(30, 230, (n_channels, height, width))
    x = np.broadcast_to(base, (n_frames, n_channels, height, width)).copy()
    for _ in range(n_frames):  # darkened patches, 1-8 frames long
        t0, dur = rng.integers(3, n_frames), rng.integers(1, 9)
        i0, j0 = rng.integers(0, height), rng.integers(0, width)
        ratio = rng.uniform(0.3, 1.05)
        tint = rng.uniform(0.7, 1.3, (n_channels, 1, 1)) if rng.random() < 0.4 else 1.0
        sl = (slice(t0, t0 + dur), slice(None), slice(i0, i0 + rng.integers(1, 4)), slice(j0, j0 + rng.integers(1, 4)))
        x[sl] = x[sl] * ratio * tint
    for _ in range(n_frames // 4):  # objects
        t0, dur = rng.integers(3, n_frames), rng.integers(1, 5)
        i0, j0 = rng.integers(0, height), rng.integers(0, width)
        x[t0 : t0 + dur, :, i0 : i0 + 2, j0 : j0 + 2] = rng.uniform(0, 255, (n_channels, 1, 1))
    for i, j in zip(*np.nonzero(rng.random((height, width)) < 0.15)):  # jumps that stay
        x[rng.integers(5, n_frames - 5) :, :, i, j] = rng.uniform(0, 255, n_channels)
    x = x + rng.choice([0.0, 1.0, 3.0], size=(1, 1, height, width)) * rng.standard_normal(x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def shadow_scene(n_frames: int = 64, learn: int = 40, height: int = 40, width: int = 56, seed: int = 0):
    """A synthetic scene with known labels: ``(frames (T, 3, H, W) uint8, labels (T, H, W) int)``.

    A static textured RGB background with noise (sigma 2) is learned for ``learn`` frames;
    then a bright object (8x10) moves right by 1 pixel a frame, with its shadow (the
    background times 0.7, 8 rows) below it and a colour cast (red and blue times 0.55,
    green unchanged: darker but another chroma) above it. Labels: 0 background, 1 object,
    2 shadow, 3 colour cast.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    texture = np.stack(
        [
            120 + 50 * np.sin(xx / 5.0 + c) * np.cos(yy / 7.0 - c) + rng.uniform(-20, 20, (height, width))
            for c in range(3)
        ]
    )
    background = np.clip(texture, 40, 210)
    frames = np.empty((n_frames, 3, height, width))
    labels = np.zeros((n_frames, height, width), dtype=np.int64)
    for t in range(n_frames):
        frame = background.copy()
        if t >= learn:
            j0 = 4 + (t - learn)
            obj = (slice(14, 22), slice(j0, j0 + 10))
            shade = (slice(22, 30), slice(j0, j0 + 10))
            cast = (slice(6, 14), slice(j0, j0 + 10))
            frame[:, shade[0], shade[1]] *= 0.7
            frame[:, cast[0], cast[1]] *= np.array([0.55, 1.0, 0.55])[:, None, None]
            frame[:, obj[0], obj[1]] = np.array([245.0, 240.0, 235.0])[:, None, None]
            labels[t][obj], labels[t][shade], labels[t][cast] = 1, 2, 3
        frames[t] = frame + 2.0 * rng.standard_normal(frame.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8), labels


#: the scene is clean (noise sigma 2): a variance floor for such footage instead of the
#: default sigma >= 10, which is meant for compressed video and lets the colour cast pass
#: the chromaticity test (whose bound scales with the variance)
CLEAN = dict(min_var=36.0)


def run(model: BackgroundSubtractorMOG, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed a ``(T, C, H, W)`` clip of one stream: ``(foreground, shadow)``, ``(T, H, W)`` bool each."""
    out = [model(frame[None], return_shadows=True) for frame in frames]
    return torch.cat([fg for fg, _ in out])[:, 0], torch.cat([sh for _, sh in out])[:, 0]


# ----------------------------------------------------------------------------------------
# The synthetic scene
# ----------------------------------------------------------------------------------------
class TestScene:
    @pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
    def test_shadow_recall_precision(self, device, covariance_type):
        frames, labels = shadow_scene()
        model = BackgroundSubtractorMOG(detect_shadows=True, covariance_type=covariance_type, compile=False, **CLEAN)
        model = model.to(device)
        fg, shadow = run(model, torch.from_numpy(frames).to(device))
        fg, shadow, learn = fg.cpu().numpy(), shadow.cpu().numpy(), 40
        assert not fg[5:learn].any() and not shadow[5:learn].any()  # a learned static background
        fg, shadow, labels = fg[learn:], shadow[learn:], labels[learn:]
        truth = labels == 2
        tp = (shadow & truth).sum()
        recall, precision = tp / truth.sum(), tp / shadow.sum()
        assert recall >= 0.99 and precision >= 0.99, (recall, precision)
        obj = labels == 1
        assert fg[obj].mean() >= 0.99 and not shadow[obj].any()  # the object: foreground, never shadow
        cast = labels == 3
        assert shadow[cast].mean() <= 0.01  # darker, but another chroma: not a shadow ...
        assert fg[cast].mean() >= 0.95  # ... but foreground
        assert fg[labels == 0].mean() <= 0.01 and shadow[labels == 0].mean() <= 0.01
        assert not (fg & shadow).any()

    def test_shadows_off_labels_the_shadow_foreground(self):
        frames, labels = shadow_scene()
        model = BackgroundSubtractorMOG(compile=False)
        fg, shadow = run(model, torch.from_numpy(frames))
        assert not shadow.any()
        assert fg.numpy()[40:][labels[40:] == 2].mean() >= 0.99  # what detect_shadows takes out

    def test_tau_bounds_the_darkening(self):
        """Background times 0.7 is a shadow for tau <= 0.7 and not for tau = 0.75."""
        frames, labels = shadow_scene()
        truth = labels[40:] == 2
        found = {}
        for tau in (0.5, 0.65, 0.75):
            model = BackgroundSubtractorMOG(detect_shadows=True, shadow_threshold=tau, compile=False)
            found[tau] = run(model, torch.from_numpy(frames))[1].numpy()[40:][truth].mean()
        assert found[0.5] >= 0.99 and found[0.65] >= 0.95 and found[0.75] <= 0.01, found


# ----------------------------------------------------------------------------------------
# The per-pixel reference
# ----------------------------------------------------------------------------------------
class TestReference:
    @pytest.mark.parametrize("n_channels", [1, 3], ids=["grey", "rgb"])
    @pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
    @pytest.mark.parametrize("seed", [0, 1])
    def test_equals_per_pixel_reference(self, device, n_channels, covariance_type, seed):
        frames = shadow_sequence(seed, n_channels)
        settings = dict(learning_rate=0.05, covariance_type=covariance_type)
        want_fg, want_shadow = reference_shadows(frames, **settings)
        assert want_shadow.sum() >= 20 and want_fg.sum() >= 20  # both labels are exercised
        model = BackgroundSubtractorMOG(**settings, detect_shadows=True, state_dtype=torch.float64, compile=False)
        fg, shadow = run(model.to(device), torch.from_numpy(frames).to(device))
        np.testing.assert_array_equal(shadow.cpu().numpy(), want_shadow)
        np.testing.assert_array_equal(fg.cpu().numpy(), want_fg)

    def test_shadow_match_sigma(self):
        frames = shadow_sequence(2, 3)
        want_fg, want_shadow = reference_shadows(frames, shadow_match_sigma=1.0, shadow_threshold=0.6)
        model = BackgroundSubtractorMOG(
            learning_rate=0.05,
            detect_shadows=True,
            shadow_match_sigma=1.0,
            shadow_threshold=0.6,
            state_dtype=torch.float64,
            compile=False,
        )
        fg, shadow = run(model, torch.from_numpy(frames))
        np.testing.assert_array_equal(shadow.numpy(), want_shadow)
        np.testing.assert_array_equal(fg.numpy(), want_fg)
        wide = BackgroundSubtractorMOG(
            learning_rate=0.05,
            detect_shadows=True,
            shadow_match_sigma=6.0,
            shadow_threshold=0.6,
            state_dtype=torch.float64,
            compile=False,
        )
        assert (run(wide, torch.from_numpy(frames))[1] >= shadow).all()  # a wider bound finds more
        assert run(wide, torch.from_numpy(frames))[1].sum() > shadow.sum()


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------
class TestModule:
    def test_off_is_unchanged(self):
        """``detect_shadows=False`` gives the masks and state of a model built without the new
        arguments; on, the state is the same (the test only reads it) and the foreground is
        the old one minus the shadows."""
        frames = torch.from_numpy(shadow_sequence(3, 3))
        plain = BackgroundSubtractorMOG(learning_rate=0.05, compile=False)
        off = BackgroundSubtractorMOG(
            learning_rate=0.05,
            compile=False,
            detect_shadows=False,
            shadow_threshold=0.7,
            shadow_value=50,
            shadow_match_sigma=3.0,
        )
        on = BackgroundSubtractorMOG(learning_rate=0.05, compile=False, detect_shadows=True)
        for frame in frames:
            mask = plain(frame[None])
            assert torch.equal(off(frame[None]), mask)
            fg, shadow = on(frame[None], return_shadows=True)
            assert torch.equal(fg | shadow, mask) and not (fg & shadow).any()
        for name in ("weight", "mean", "variance", "frames_seen"):
            assert torch.equal(getattr(off, name), getattr(plain, name))
            assert torch.equal(getattr(on, name), getattr(plain, name))
        assert on.state_dict().keys() == plain.state_dict().keys()

    def test_return_shadows_when_off(self):
        model = BackgroundSubtractorMOG(compile=False)
        fg, shadow = model(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), return_shadows=True)
        assert fg.shape == shadow.shape == (2, 1, 4, 5) and shadow.dtype == torch.bool and not shadow.any()

    @pytest.mark.parametrize("shadow_value", [127, 0, 255, 50])
    def test_apply_is_opencvs_mask(self, shadow_value):
        frames, labels = shadow_scene(n_frames=46)
        model = BackgroundSubtractorMOG(detect_shadows=True, shadow_value=shadow_value, compile=False)
        twin = copy.deepcopy(model)
        for frame in torch.from_numpy(frames):
            mask = model.apply(frame[None])
            fg, shadow = twin(frame[None], return_shadows=True)
            assert mask.dtype == torch.uint8 and mask.shape == (1, 1, *frame.shape[1:])
            want = torch.where(fg, 255, torch.where(shadow, shadow_value, 0)).to(torch.uint8)
            assert torch.equal(mask, want)
        assert set(mask.unique().tolist()) == {0, shadow_value, 255}
        assert (mask[0, 0].numpy()[labels[-1] == 2] == shadow_value).mean() >= 0.99

    def test_apply_without_shadows(self):
        frames, _ = shadow_scene(n_frames=46)
        model = BackgroundSubtractorMOG(compile=False)
        masks = torch.cat([model.apply(f[None]) for f in torch.from_numpy(frames)])
        assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) == {0, 255}

    def test_forward_and_process_exclude_shadows(self):
        frames, labels = shadow_scene(n_frames=46)
        clip = torch.from_numpy(frames)
        masks = BackgroundSubtractorMOG(detect_shadows=True, compile=False, **CLEAN).process(clip)
        fg, shadow = run(BackgroundSubtractorMOG(detect_shadows=True, compile=False, **CLEAN), clip)
        assert masks.dtype == torch.bool and torch.equal(masks[:, 0], fg)
        assert shadow[40:].numpy()[labels[40:] == 2].all() and not masks[:, 0][torch.from_numpy(labels == 2)].any()

    def test_rate_zero_labels_shadows_on_the_frozen_state(self):
        frames, labels = shadow_scene(n_frames=46)
        clip = torch.from_numpy(frames)
        model = BackgroundSubtractorMOG(detect_shadows=True, compile=False)
        model.process(clip[:40])
        state = {k: v.clone() for k, v in model.state_dict().items()}
        fg, shadow = model(clip[45:], learning_rate=0, return_shadows=True)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        frozen_fg = mog_foreground(clip[45:], model.weight, model.mean, model.variance)
        colour = mog_shadow(clip[45:], model.weight, model.mean, model.variance)
        assert torch.equal(shadow, frozen_fg & colour) and torch.equal(fg, frozen_fg & ~colour)
        assert shadow[0, 0].numpy()[labels[45] == 2].all()
        assert torch.equal(
            model.apply(clip[45:], learning_rate=0), torch.where(fg, 255, torch.where(shadow, 127, 0)).to(torch.uint8)
        )

    @pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
    def test_module_equals_function(self, covariance_type):
        """The fused step's shadow label is the foreground of the update times
        :func:`mog_shadow` on the new state."""
        frames = torch.from_numpy(shadow_sequence(4, 3))
        settings = dict(learning_rate=0.05, covariance_type=covariance_type, background_ratio=0.6)
        model = BackgroundSubtractorMOG(
            **settings, detect_shadows=True, shadow_threshold=0.4, shadow_match_sigma=3.0, compile=False
        )
        found = 0
        for frame in frames:
            fg, shadow = model(frame[None], return_shadows=True)
            colour = mog_shadow(
                frame[None],
                model.weight,
                model.mean,
                model.variance,
                background_ratio=0.6,
                match_sigma=3.0,
                shadow_threshold=0.4,
            )
            assert torch.equal(shadow, (fg | shadow) & colour)
            found += int(shadow.sum())
        assert found >= 20

    def test_batch_of_streams(self):
        """B streams at once label as each stream alone."""
        clips = torch.stack([torch.from_numpy(shadow_sequence(s, 3, n_frames=25)) for s in (5, 6)], 1)  # (T, B, ...)
        batched = BackgroundSubtractorMOG(learning_rate=0.05, detect_shadows=True, compile=False)
        alone = [BackgroundSubtractorMOG(learning_rate=0.05, detect_shadows=True, compile=False) for _ in range(2)]
        for frames in clips:
            fg, shadow = batched(frames, return_shadows=True)
            for b, model in enumerate(alone):
                fg_b, shadow_b = model(frames[b : b + 1], return_shadows=True)
                assert torch.equal(fg[b : b + 1], fg_b) and torch.equal(shadow[b : b + 1], shadow_b)

    def test_float_frames(self):
        frames = shadow_sequence(7, 3)
        as_uint8 = run(BackgroundSubtractorMOG(detect_shadows=True, compile=False), torch.from_numpy(frames))
        as_float = run(
            BackgroundSubtractorMOG(detect_shadows=True, compile=False), torch.from_numpy(frames).double() / 255
        )
        for got, want in zip(as_float, as_uint8):
            assert (got == want).float().mean() >= 0.999  # x / 255 * 255 may differ from x by an ulp

    def test_state_dict_round_trip(self):
        frames = torch.from_numpy(shadow_sequence(8, 3))
        settings = dict(
            learning_rate=0.05,
            detect_shadows=True,
            shadow_threshold=0.6,
            shadow_value=80,
            shadow_match_sigma=3.0,
            compile=False,
        )
        first = BackgroundSubtractorMOG(**settings)
        run(first, frames[:20])
        resumed = BackgroundSubtractorMOG(**settings)
        resumed.load_state_dict(first.state_dict())
        for frame in frames[20:]:
            assert torch.equal(first.apply(frame[None]), resumed.apply(frame[None]))
        # a state learned without shadows (e.g. an older checkpoint) loads into a model with them
        old = BackgroundSubtractorMOG(learning_rate=0.05, compile=False)
        run(old, frames[:20])
        assert old.state_dict().keys() == first.state_dict().keys()
        resumed.load_state_dict(old.state_dict())
        # the settings are the module's: copies keep them, the repr shows them
        for model in (copy.deepcopy(first), resumed):
            assert (model.detect_shadows, model.shadow_threshold, model.shadow_value, model.shadow_match_sigma) == (
                True,
                0.6,
                80,
                3.0,
            )
        text = repr(first)
        assert "detect_shadows=True" in text and "shadow_threshold=0.6" in text
        assert "shadow_value=80" in text and "shadow_match_sigma=3.0" in text

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            (dict(shadow_threshold=0.0), ValueError, "shadow_threshold"),
            (dict(shadow_threshold=1.5), ValueError, "shadow_threshold"),
            (dict(shadow_threshold=float("nan")), ValueError, "shadow_threshold"),
            (dict(shadow_value=256), ValueError, "shadow_value"),
            (dict(shadow_value=-1), ValueError, "shadow_value"),
            (dict(shadow_value=12.0), TypeError, "shadow_value"),
            (dict(shadow_match_sigma=0.0), ValueError, "shadow_match_sigma"),
            (dict(shadow_match_sigma=-2.0), ValueError, "shadow_match_sigma"),
            (dict(detect_shadows="yes"), TypeError, "detect_shadows"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            BackgroundSubtractorMOG(**kwargs)

    def test_tau_one_is_allowed(self):
        model = BackgroundSubtractorMOG(detect_shadows=True, shadow_threshold=1.0, compile=False)
        assert model.shadow_threshold == 1.0


class TestCompiled:
    @pytest.mark.parametrize(("n_channels", "covariance_type"), [(3, "spherical"), (3, "diag"), (1, "spherical")])
    def test_compiled_equals_eager(self, device, n_channels, covariance_type):
        frames = torch.from_numpy(shadow_sequence(9, n_channels, height=12, width=16)).to(device)
        settings = dict(learning_rate=0.05, covariance_type=covariance_type, detect_shadows=True)
        eager = run(BackgroundSubtractorMOG(**settings, compile=False).to(device), frames)
        compiled = BackgroundSubtractorMOG(**settings, compile=True).to(device)
        got = run(compiled, frames)
        assert eager[1].sum() >= 20
        assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])
        assert not compiled._compile_failed

    def test_compiled_off_equals_eager_and_plain(self, device):
        frames = torch.from_numpy(shadow_sequence(10, 3, height=12, width=16)).to(device)
        plain = BackgroundSubtractorMOG(learning_rate=0.05, compile=False).to(device)
        off = BackgroundSubtractorMOG(learning_rate=0.05, detect_shadows=False, compile=True).to(device)
        for frame in frames:
            assert torch.equal(off(frame[None]), plain(frame[None]))


# ----------------------------------------------------------------------------------------
# The pure function and the shared maths
# ----------------------------------------------------------------------------------------
class TestFunction:
    def test_matches_detect_shadow_gmm(self):
        """On a spherical state whose components all have weight, mog_shadow is OpenCV's test
        with ``var_threshold = lambda^2 C`` (one home for the maths: torchgmm._shadows)."""
        g = torch.Generator().manual_seed(0)
        weight = torch.rand(2, 3, 5, 6, generator=g) + 0.05
        weight = weight / weight.sum(1, keepdim=True)
        mean = torch.rand(2, 3, 3, 5, 6, generator=g) * 200 + 20
        variance = torch.rand(2, 3, 5, 6, generator=g) * 80 + 36
        frame = (mean[:, 0] * torch.rand(2, 1, 5, 6, generator=g) * 1.2).round().clamp(0, 255).to(torch.uint8)
        got = mog_shadow(frame, weight, mean, variance, background_ratio=0.7, match_sigma=2.5, shadow_threshold=0.5)
        want = torchgmm.detect_shadow_gmm(
            frame, weight, mean, variance, var_threshold=2.5 * 2.5 * 3, background_ratio=0.7, shadow_threshold=0.5
        )
        assert got.shape == (2, 1, 5, 6) and torch.equal(got[:, 0], want) and 5 <= int(got.sum()) < got.numel()

    def test_public_names(self):
        from torchgmm import mog2

        assert torchgmm.detect_shadow_gmm is mog2.detect_shadow_gmm
        assert torchgmm.mog_shadow is mog_shadow

    def test_diag_uses_the_mean_channel_variance(self):
        """diag: the distortion bound uses sigma2 = the mean of the channel variances, as the
        match test does (not a Mahalanobis distance)."""
        weight = torch.ones(1, 1, 1, 1)
        mean = torch.tensor([200.0, 100.0, 100.0]).view(1, 1, 3, 1, 1)
        frame = torch.tensor([150, 60, 60], dtype=torch.uint8).view(1, 3, 1, 1)
        # a = 0.7, |a mu - x|^2 = 300; bound 2.5^2 3 sigma2 a^2 = 9.1875 sigma2: passes for sigma2 > 32.65.
        # [100, 4, 4] (sigma2 36) passes, where the Mahalanobis sum 100/100 + 100/4 + 100/4 would not
        for variances, want in (([100.0, 4.0, 4.0], True), ([80.0, 4.0, 4.0], False)):
            v = torch.tensor(variances).view(1, 1, 3, 1, 1)
            spherical = v.mean(2)
            assert mog_shadow(frame, weight, mean, v).item() is want
            assert mog_shadow(frame, weight, mean, spherical).item() is want

    def test_zero_weight_components_are_not_background(self):
        weight = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
        mean = torch.tensor([[250.0] * 3, [200.0] * 3]).view(1, 2, 3, 1, 1)
        frame = torch.full((1, 3, 1, 1), 150, dtype=torch.uint8)  # 0.75 of the second, 0.6 of the first
        assert (
            mog_shadow(
                frame, weight, mean, torch.full((1, 2, 1, 1), 36.0), background_ratio=1.0, shadow_threshold=0.7
            ).item()
            is False
        )
        weight = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
        assert (
            mog_shadow(
                frame, weight, mean, torch.full((1, 2, 1, 1), 36.0), background_ratio=1.0, shadow_threshold=0.7
            ).item()
            is True
        )
