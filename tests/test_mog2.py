"""Tests of torchgmm.mog2 (OpenCV's MOG2 background subtractor).

References, independent of the code under test:

- ``tests/reference_mog2.py``: a per-pixel loop written from OpenCV's ``bgfg_gaussmix2.cpp``;
  a float64 model equals it to the last bit, a float32 model equals its float32 mode (OpenCV's
  arithmetic) to the last bit.
- OpenCV itself (``cv2.createBackgroundSubtractorMOG2``) on generated scenes.
- Scenes with known shadow pixels, for the shadow label's recall and precision.
"""

from __future__ import annotations

import copy
import doctest
import warnings

import numpy as np
import pytest
import torch
from reference_mog2 import _shadow, reference_background_image, reference_mog2

import torchgmm.mog2 as mog2_module
from torchgmm._checks import ShapeError
from torchgmm.mog2 import (
    BackgroundSubtractorMOG2,
    detect_shadow_gmm,
    mog2_background_image,
    mog2_learning_rate,
    mog2_update,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------
# Sequences
# ----------------------------------------------------------------------------------------
def random_sequence(n_channels: int, seed: int, t: int = 60, h: int = 4, w: int = 5) -> np.ndarray:
    """``(T, C, H, W)`` uint8: each pixel flips between four noisy levels, with random spikes,
    so that modes are created, replaced when all K are used, and pruned."""
    rng = np.random.default_rng(seed)
    levels = rng.uniform(20, 235, (4, n_channels, h, w))
    pick = rng.choice(4, size=(t, 1, h, w), p=[0.55, 0.25, 0.12, 0.08])
    x = np.take_along_axis(levels[None].repeat(t, 0), pick[:, None].repeat(n_channels, 2), 1)[:, 0]
    x = x + rng.normal(0, 2.5, x.shape)
    x = np.where(rng.random((t, 1, h, w)) < 0.08, rng.uniform(0, 255, x.shape), x)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def shadow_scene(n_channels: int, seed: int = 0, t: int = 200, h: int = 48, w: int = 64):
    """A noisy static scene and, from frame 60, three patches moving to and fro together: a
    bright square; below it its shadow, the background at 60% brightness (same chroma, same
    noise); lower still a dark patch that is no shadow: 30% brightness (darker than 1 / tau)
    in grey, a blue tint (other chroma) in colour.

    Returns:
        ``(frames (T, C, H, W) uint8, objects (T, H, W) bool (square and dark patch),
        shadow (T, H, W) bool)``.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(70, 200, (n_channels, h, w))
    x = base[None] + rng.normal(0, 2.0, (t, n_channels, h, w))
    square = np.zeros((t, h, w), dtype=bool)
    shadow = np.zeros((t, h, w), dtype=bool)
    dark = np.zeros((t, h, w), dtype=bool)
    for i in range(60, t):
        step = (i - 60) % (2 * (w - 14))  # back and forth, one pixel a frame
        left = 2 + min(step, 2 * (w - 14) - step)
        square[i, 6:16, left : left + 10] = True
        shadow[i, 16:28, left + 3 : left + 13] = True
        dark[i, 34:44, left : left + 10] = True
    colour = np.array([235.0, 60.0, 40.0]) if n_channels == 3 else np.array([20.0])
    tint = np.array([0.6, 0.6, 0.95]) if n_channels == 3 else np.array([0.3])
    x = np.where(shadow[:, None], 0.6 * x, x)
    x = np.where(dark[:, None], tint[None, :, None, None] * x, x)
    x = np.where(square[:, None], colour[None, :, None, None] + rng.normal(0, 2.0, x.shape), x)
    return np.clip(np.round(x), 0, 255).astype(np.uint8), square | dark, shadow


def run(model: BackgroundSubtractorMOG2, frames, rates=None) -> torch.Tensor:
    """OpenCV masks ``(T, H, W)`` uint8, one frame at a time."""
    frames = torch.as_tensor(frames)
    out = []
    for t in range(frames.shape[0]):
        rate = -1.0 if rates is None else float(rates[t])
        out.append(model.apply(frames[t : t + 1], rate)[0])
    return torch.stack(out)


def active_state(model: BackgroundSubtractorMOG2, stream: int = 0) -> dict[str, np.ndarray]:
    """The state of the modes in use (the values of unused modes are never read)."""
    n = model.n_modes[stream].long().cpu().numpy()
    used = np.arange(model.n_mixtures)[:, None, None] < n[None]
    return {
        "n_modes": n,
        "weight": np.where(used, model.weight[stream].cpu().double().numpy(), 0),
        "variance": np.where(used, model.variance[stream].cpu().double().numpy(), 0),
        "mean": np.where(used[:, None], model.mean[stream].cpu().double().numpy(), 0),
    }


def reference_active(state: dict) -> dict[str, np.ndarray]:
    n = state["n_modes"]
    used = np.arange(state["weight"].shape[0])[:, None, None] < n[None]
    return {
        "n_modes": n,
        "weight": np.where(used, state["weight"], 0).astype(np.float64),
        "variance": np.where(used, state["variance"], 0).astype(np.float64),
        "mean": np.where(used[:, None], state["mean"], 0).astype(np.float64),
    }


def assert_same_state(got: dict, want: dict, tol: float = 0.0) -> None:
    np.testing.assert_array_equal(got["n_modes"], want["n_modes"], err_msg="n_modes")
    for name in ("weight", "variance", "mean"):
        np.testing.assert_allclose(got[name], want[name], rtol=tol, atol=tol, err_msg=name)


# ----------------------------------------------------------------------------------------
# Against the per-pixel reference
# ----------------------------------------------------------------------------------------
SETTINGS = [
    dict(n_mixtures=3, complexity_reduction_threshold=0.3, history=20),  # pruning and replacement
    dict(n_mixtures=5, history=30, var_threshold_gen=4.0, background_ratio=0.7, shadow_threshold=0.6),
    dict(n_mixtures=2, complexity_reduction_threshold=0.0, var_min=9.0, var_max=30.0, history=10, background_ratio=0.6),
]


class TestReference:
    @pytest.mark.parametrize("settings", range(len(SETTINGS)))
    @pytest.mark.parametrize("detect_shadows", [True, False], ids=["shadows", "no-shadows"])
    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_random_sequence_float64_exact(self, device, n_channels, detect_shadows, settings):
        settings = {**SETTINGS[settings], "detect_shadows": detect_shadows}
        frames = random_sequence(n_channels, seed=n_channels + 10 * len(settings))
        want, state = reference_mog2(frames, **settings)
        model = BackgroundSubtractorMOG2(**settings, state_dtype=torch.float64, compile=False).to(device)
        got = run(model, frames)
        np.testing.assert_array_equal(got.cpu().numpy(), want)
        assert int(model.frames_seen) == state["frames_seen"] == len(frames)
        assert_same_state(active_state(model), reference_active(state))
        assert set(np.unique(want)) >= ({0, 127, 255} if detect_shadows else {0, 255})

    def test_sequence_creates_replaces_and_prunes_modes(self):
        # the settings of the first case above do exercise every branch of the update
        frames = random_sequence(3, seed=3 + 10 * 4)
        model = BackgroundSubtractorMOG2(**SETTINGS[0], state_dtype=torch.float64, compile=False)
        counts, zero_weight_in_use = [], 0
        for t in range(len(frames)):
            model.apply(torch.from_numpy(frames[t : t + 1]))
            counts.append(model.n_modes[0].clone())
            used = torch.arange(3)[:, None, None] < model.n_modes[0]
            zero_weight_in_use += int(((model.weight[0] == 0) & used).sum())
        counts = torch.stack(counts)
        assert (counts == 3).any()  # all K used: a new mode replaces the last
        assert (counts[1:] < counts[:-1]).sum() > 10  # modes pruned
        assert (counts[1:] > counts[:-1]).sum() > 10  # modes created
        assert zero_weight_in_use > 0  # OpenCV's quirk: a pruned mode before the last stays in use at weight 0

    def test_ties_move_the_mode_up_as_opencv(self):
        # OpenCV moves a mode up past modes of *equal* weight (it stops at a strictly larger one):
        # (1) a new mode of weight a = 0.5 next to a lone mode rescaled to 1 * (1 - a) = 0.5;
        frames = np.array([100, 200], dtype=np.uint8).reshape(2, 1, 1, 1)
        want, state = reference_mog2(frames, learning_rates=[-1, 0.5], complexity_reduction_threshold=0.0)
        model = BackgroundSubtractorMOG2(complexity_reduction_threshold=0.0, state_dtype=torch.float64, compile=False)
        np.testing.assert_array_equal(run(model, frames, [-1, 0.5]).numpy(), want)
        assert model.mean[0, :2, 0, 0, 0].tolist() == [200.0, 100.0] == state["mean"][:2, 0, 0, 0].tolist()
        assert model.weight[0, :2, 0, 0].tolist() == [0.5, 0.5]
        # (2) a matched mode of weight 0 (kept in use) reaching the weight of the mode above it
        weight = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
        mean = torch.tensor([100.0, 200.0], dtype=torch.float64).view(1, 2, 1, 1, 1)
        variance = torch.full((1, 2, 1, 1), 15.0, dtype=torch.float64)
        n_modes = torch.full((1, 1, 1), 2.0)
        frame = torch.full((1, 1, 1, 1), 200, dtype=torch.uint8)
        _, _, w, m, v, n = mog2_update(frame, weight, mean, variance, n_modes, 0.5, complexity_reduction_threshold=0.0)
        assert m[0, :, 0, 0, 0].tolist() == [200.0, 100.0] and w[0, :, 0, 0].tolist() == [0.5, 0.5]
        assert v[0, :, 0, 0].tolist() == [4.0, 15.0] and n.item() == 2  # var 15 + 1 * (0 - 15), floored

    @pytest.mark.parametrize("detect_shadows", [True, False], ids=["shadows", "no-shadows"])
    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_float32_is_opencvs_arithmetic(self, n_channels, detect_shadows):
        # float32 state: the reference's float32 mode (OpenCV's float members, rate in double)
        frames = random_sequence(n_channels, seed=7)
        want, state = reference_mog2(frames, dtype=np.float32, detect_shadows=detect_shadows, **SETTINGS[0])
        model = BackgroundSubtractorMOG2(detect_shadows=detect_shadows, **SETTINGS[0], compile=False)
        np.testing.assert_array_equal(run(model, frames).numpy(), want)
        assert_same_state(active_state(model), reference_active(state))
        want_bg = reference_background_image(state, SETTINGS[0].get("background_ratio", 0.9), dtype=np.float32)
        np.testing.assert_array_equal(model.background_image()[0].numpy(), want_bg)

    def test_explicit_rates_zero_and_restart(self, device):
        # OpenCV: a rate >= 0 from the second frame on, negative = automatic, 0 learns nothing and
        # creates no mode, >= 1 restarts the model from that frame (and its rate is automatic)
        frames = random_sequence(3, seed=5, t=40)
        rates = np.full(40, -1.0)
        rates[[0, 3, 4, 5]] = 0.05
        rates[10:14] = 0.0
        rates[20] = 1.0
        rates[21:25] = 0.2
        rates[30] = 3.0
        want, state = reference_mog2(frames, learning_rates=rates, **SETTINGS[0])
        model = BackgroundSubtractorMOG2(**SETTINGS[0], state_dtype=torch.float64, compile=False).to(device)
        np.testing.assert_array_equal(run(model, frames, rates).cpu().numpy(), want)
        assert int(model.frames_seen) == state["frames_seen"] == 10  # restarted at frame 30
        assert_same_state(active_state(model), reference_active(state))

    def test_float_frames_equal_reference_on_the_same_values(self):
        frames = random_sequence(3, seed=9)
        unit = torch.from_numpy(frames).double() / 255  # the model scales these by 255 again
        want, state = reference_mog2((unit * 255).numpy(), **SETTINGS[1])
        model = BackgroundSubtractorMOG2(**SETTINGS[1], state_dtype=torch.float64, compile=False)
        np.testing.assert_array_equal(run(model, unit).numpy(), want)
        assert_same_state(active_state(model), reference_active(state))
        uint8_model = BackgroundSubtractorMOG2(**SETTINGS[1], state_dtype=torch.float64, compile=False)
        agreement = (run(uint8_model, frames).numpy() == want).mean()
        assert agreement >= 0.99  # uint8 and [0, 1] frames are the same video

    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_background_image_equals_reference(self, n_channels):
        frames = random_sequence(n_channels, seed=11)
        _, state = reference_mog2(frames, **SETTINGS[1])
        model = BackgroundSubtractorMOG2(**SETTINGS[1], state_dtype=torch.float64, compile=False)
        run(model, frames)
        want = reference_background_image(state, SETTINGS[1]["background_ratio"])
        np.testing.assert_array_equal(model.background_image()[0].numpy(), want)
        # and the function on the same state
        got = mog2_background_image(model.weight, model.mean, model.n_modes, SETTINGS[1]["background_ratio"])
        np.testing.assert_array_equal(got[0].numpy(), want)

    def test_module_equals_function(self):
        frames = torch.from_numpy(random_sequence(3, seed=13, t=20))
        model = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        b, c, h, w = 1, *frames.shape[1:]
        k = SETTINGS[0]["n_mixtures"]
        state = [torch.zeros(b, k, h, w), torch.zeros(b, k, c, h, w), torch.zeros(b, k, h, w)]
        n_modes = torch.zeros(b, h, w)  # the module's float32 counts
        keys = ("complexity_reduction_threshold",)
        kwargs = {key: SETTINGS[0][key] for key in keys}
        for t in range(len(frames)):
            rate = mog2_learning_rate(torch.tensor(t), -1.0, SETTINGS[0]["history"])
            fg, shadow, *state, n_modes = mog2_update(frames[t : t + 1], *state, n_modes, rate, **kwargs)
            got_fg, got_shadow = model(frames[t : t + 1], return_shadows=True)
            assert torch.equal(got_fg, fg) and torch.equal(got_shadow, shadow)
        for name, tensor in zip(("weight", "mean", "variance"), state):
            assert torch.equal(getattr(model, name), tensor)
        assert torch.equal(model.n_modes, n_modes)

    def test_learning_rate_schedule(self):
        # OpenCV: 1 / min(2 n, history) on frame n; a given rate >= 0 only from the second frame
        history = 7
        got = [mog2_learning_rate(torch.tensor(n), -1.0, history).item() for n in range(6)]
        assert got == [1 / min(2 * (n + 1), history) for n in range(6)]
        assert mog2_learning_rate(torch.tensor(0), 0.3, history).item() == 0.5
        assert mog2_learning_rate(torch.tensor(4), 0.3, history).item() == 0.3
        assert mog2_learning_rate(torch.tensor(4), 0.0, history).item() == 0.0


class TestShadowFunction:
    def test_equals_reference_per_pixel(self):
        rng = np.random.default_rng(0)
        b, k, c, h, w = 1, 4, 3, 6, 7
        weight = rng.dirichlet(np.ones(k), size=(h, w)).transpose(2, 0, 1)[None]
        mean = rng.uniform(0, 255, (b, k, c, h, w))
        mean[0, 1, :, 0, 0] = 0  # a zero mean ends the test
        variance = rng.uniform(4, 75, (b, k, h, w))
        n_modes = rng.integers(0, k + 1, (b, h, w))
        frame = np.clip(mean[:, 0] * rng.uniform(0.4, 1.1, (b, 1, h, w)) + rng.normal(0, 4, (b, c, h, w)), 0, 255)
        frame = np.round(frame).astype(np.uint8)
        got = detect_shadow_gmm(
            torch.from_numpy(frame),
            *(torch.from_numpy(a) for a in (weight, mean, variance)),
            n_modes=torch.from_numpy(n_modes),
            var_threshold=16.0,
            background_ratio=0.9,
            shadow_threshold=0.5,
        )
        want = np.zeros((h, w), dtype=bool)
        for i in range(h):
            for j in range(w):
                want[i, j] = _shadow(
                    [float(v) for v in frame[0, :, i, j]],
                    int(n_modes[0, i, j]),
                    weight[0, :, i, j].tolist(),
                    variance[0, :, i, j].tolist(),
                    mean[0, :, :, i, j].tolist(),
                    16.0,
                    0.9,
                    0.5,
                    float,
                )
        np.testing.assert_array_equal(got[0].numpy(), want)
        assert 0 < want.sum() < want.size

    def test_per_channel_variances_equal_spherical_when_equal(self):
        rng = np.random.default_rng(1)
        weight = torch.full((2, 3, 5, 5), 1 / 3, dtype=torch.float64)
        mean = torch.from_numpy(rng.uniform(50, 250, (2, 3, 3, 5, 5)))
        variance = torch.from_numpy(rng.uniform(4, 40, (2, 3, 5, 5)))
        frame = (mean[:, 0] * torch.from_numpy(rng.uniform(0.3, 1.0, (2, 1, 5, 5)))).round().to(torch.uint8)
        spherical = detect_shadow_gmm(frame, weight, mean, variance)
        diag = detect_shadow_gmm(frame, weight, mean, variance[:, :, None].expand(-1, -1, 3, -1, -1))
        assert torch.equal(spherical, diag)
        assert 0 < spherical.sum() < spherical.numel()
        # a channel far noisier than the others accepts a larger distortion in it
        wide = variance[:, :, None].repeat(1, 1, 3, 1, 1)
        wide[:, :, 1] *= 100
        assert (detect_shadow_gmm(frame, weight, mean, wide) >= spherical).all()

    def test_bad_shapes(self):
        frame = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
        w, m, v = torch.ones(1, 2, 2, 2), torch.ones(1, 2, 3, 2, 2), torch.ones(1, 2, 2, 2)
        with pytest.raises(ShapeError, match="n_modes"):
            detect_shadow_gmm(frame, w, m, v, n_modes=torch.ones(2, 2))
        with pytest.raises(ShapeError, match="mean"):
            detect_shadow_gmm(frame, w, m[:, :, :1], v)


# ----------------------------------------------------------------------------------------
# Against OpenCV
# ----------------------------------------------------------------------------------------
def opencv_masks(frames: np.ndarray, **settings):
    cv2 = pytest.importorskip("cv2")
    cv2.setNumThreads(1)
    s = {**dict(history=500, var_threshold=16.0, detect_shadows=True), **settings}
    sub = cv2.createBackgroundSubtractorMOG2(s["history"], s["var_threshold"], s["detect_shadows"])
    images = frames.transpose(0, 2, 3, 1) if frames.shape[1] == 3 else frames[:, 0]
    masks = np.stack([sub.apply(np.ascontiguousarray(im)) for im in images])
    background = sub.getBackgroundImage()
    background = background[None] if background.ndim == 2 else background.transpose(2, 0, 1)
    return masks, background


class TestOpenCV:
    """Measured on the shadow scene: masks equal OpenCV's on 100% of pixels, the background
    image on 100% (float32 arithmetic in OpenCV's order)."""

    @pytest.mark.parametrize("detect_shadows", [True, False], ids=["shadows", "no-shadows"])
    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_masks_and_background_agree_with_opencv(self, n_channels, detect_shadows):
        frames, _, _ = shadow_scene(n_channels, seed=n_channels)
        want, want_bg = opencv_masks(frames, detect_shadows=detect_shadows)
        model = BackgroundSubtractorMOG2(detect_shadows=detect_shadows, compile=False)
        got = run(model, frames).numpy()
        assert (want == 255).mean() > 0.02  # not about an empty mask
        if detect_shadows:
            assert (want == 127).mean() > 0.01
        agreement = (got == want).mean()
        assert agreement >= 0.999, f"masks agree with OpenCV MOG2 on {agreement:.4%} of pixels"
        close = (np.abs(model.background_image()[0].numpy().astype(int) - want_bg.astype(int)) <= 1).mean()
        assert close >= 0.999, f"background image within 1 grey level of OpenCV's on {close:.4%} of pixels"

    def test_settings_agree_with_opencv(self):
        cv2 = pytest.importorskip("cv2")
        frames = random_sequence(3, seed=21, t=80, h=12, w=16)
        s = SETTINGS[1]
        sub = cv2.createBackgroundSubtractorMOG2(s["history"], 16.0, True)
        sub.setNMixtures(s["n_mixtures"])
        sub.setVarThresholdGen(s["var_threshold_gen"])
        sub.setBackgroundRatio(s["background_ratio"])
        sub.setShadowThreshold(s["shadow_threshold"])
        sub.setShadowValue(99)
        want = np.stack([sub.apply(np.ascontiguousarray(f.transpose(1, 2, 0))) for f in frames])
        model = BackgroundSubtractorMOG2(**s, shadow_value=99, compile=False)
        got = run(model, frames).numpy()
        assert set(np.unique(want)) == {0, 99, 255}
        assert (got == want).mean() >= 0.999


# ----------------------------------------------------------------------------------------
# Shadows on a scene with known shadow pixels
# ----------------------------------------------------------------------------------------
class TestShadows:
    """Measured (frames 80-199, seeds 4 and 5): recall and precision 1.0 in RGB and grey, as
    OpenCV's labels on the same frames; the dark patch (no shadow) is all foreground.
    Thresholds: 0.97 each, and 0.95 of the square and the dark patch foreground."""

    @pytest.mark.parametrize("n_channels", [3, 1], ids=["rgb", "grey"])
    def test_shadow_label_recall_and_precision(self, n_channels):
        frames, obj, shadow = shadow_scene(n_channels, seed=4)
        model = BackgroundSubtractorMOG2(compile=False)
        fg, sh = zip(*(model(torch.from_numpy(frames[t : t + 1]), return_shadows=True) for t in range(len(frames))))
        fg, sh = torch.cat(fg).numpy()[80:], torch.cat(sh).numpy()[80:]
        truth = shadow[80:] & ~obj[80:]
        recall = (sh & truth).sum() / truth.sum()
        precision = (sh & truth).sum() / max(sh.sum(), 1)
        assert recall >= 0.97 and precision >= 0.97, f"shadow recall {recall:.4f}, precision {precision:.4f}"
        assert not (fg & sh).any()  # shadows are not foreground
        assert fg[obj[80:]].mean() >= 0.95  # the square and the dark patch are

    def test_without_shadow_detection_the_shadow_is_foreground(self):
        frames, obj, shadow = shadow_scene(3, seed=4)
        model = BackgroundSubtractorMOG2(detect_shadows=False, compile=False)
        labels = run(model, frames).numpy()[80:]
        assert set(np.unique(labels)) <= {0, 255}
        assert (labels[shadow[80:] & ~obj[80:]] == 255).mean() >= 0.95
        _, sh = model(torch.from_numpy(frames[-1:]), return_shadows=True)
        assert not sh.any()


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------
def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class TestModule:
    def test_batch_equals_each_stream_alone(self):
        clips = [random_sequence(3, seed=s, t=30, h=6, w=5) for s in range(3)]
        batched = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        frames = torch.from_numpy(np.stack(clips, 1))  # (T, B, C, H, W)
        got = torch.stack([batched.apply(frames[t]) for t in range(frames.shape[0])])  # (T, B, H, W)
        for b, clip in enumerate(clips):
            alone = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
            assert torch.equal(got[:, b], run(alone, clip))
            for name in ("weight", "mean", "variance", "n_modes"):
                assert torch.equal(getattr(batched, name)[b], getattr(alone, name)[0]), name
        assert batched.background_image().shape == (3, 3, 6, 5)

    def test_state_dict_resume_is_exact(self):
        frames = random_sequence(3, seed=17, t=50)
        whole = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        want = run(whole, frames)
        first = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        head = run(first, frames[:23])
        resumed = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)  # fresh, unshaped
        resumed.load_state_dict(first.state_dict())
        assert int(resumed.frames_seen) == 23
        assert torch.equal(torch.cat([head, run(resumed, frames[23:])]), want)
        assert_state_equal(state_of(resumed), state_of(whole))

    def test_deepcopy_and_to_continue_identically(self, device):
        frames = random_sequence(1, seed=19, t=40)
        model = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        run(model, frames[:20])
        twin = copy.deepcopy(model).to(device)
        assert twin.weight.device.type == device.type and twin.n_modes.dtype == torch.float32
        assert torch.equal(run(twin, frames[20:]).cpu(), run(model, frames[20:]))
        double = copy.deepcopy(model).to(torch.float64)
        assert double.weight.dtype == double.n_modes.dtype == torch.float64  # floating buffers, counts too
        assert (run(double, frames[20:]) == run(copy.deepcopy(model), frames[20:])).float().mean() >= 0.99

    def test_reset_and_empty_state_round_trip(self):
        model = BackgroundSubtractorMOG2(compile=False)
        fresh = BackgroundSubtractorMOG2(compile=False)
        fresh.load_state_dict(model.state_dict())  # unshaped into unshaped
        assert not fresh.is_initialized
        model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
        model.reset()
        assert not model.is_initialized and int(model.frames_seen) == 0
        model(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))  # another shape after reset
        assert model.n_modes.shape == (2, 3, 3)

    def test_outputs_and_opencv_mask(self):
        frames, _, _ = shadow_scene(3, seed=2, t=120)
        model = BackgroundSubtractorMOG2(compile=False, shadow_value=50)
        twin = BackgroundSubtractorMOG2(compile=False, shadow_value=50)
        for t in range(len(frames)):
            frame = torch.from_numpy(frames[t : t + 1])
            labels = model.apply(frame)
            fg, sh = twin(frame, return_shadows=True)
            assert labels.shape == fg.shape == (1, 48, 64) and labels.dtype == torch.uint8
            assert torch.equal(labels == 255, fg) and torch.equal(labels == 50, sh)
        assert (labels == 50).any() and (labels == 255).any()
        assert model.process(torch.from_numpy(frames[:0])).shape == (0, 48, 64)
        assert torch.nn.Sequential(model).apply(lambda m: None)[0] is model  # nn.Module.apply

    def test_repr_names_the_settings(self):
        text = repr(BackgroundSubtractorMOG2(history=77, compile=False))
        assert "history=77" in text and "var_threshold_gen=9.0" in text and "shadow_value=127" in text

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            (dict(history=0), "history"),
            (dict(n_mixtures=0), "n_mixtures"),
            (dict(n_mixtures=256), "n_mixtures"),
            (dict(var_threshold=-1.0), "var_threshold"),
            (dict(background_ratio=1.5), "background_ratio"),
            (dict(var_threshold_gen=float("nan")), "var_threshold_gen"),
            (dict(var_init=0.0), "var_init"),
            (dict(var_min=-4.0), "var_min"),
            (dict(var_max=0.0), "var_max"),
            (dict(complexity_reduction_threshold=-0.1), "complexity_reduction_threshold"),
            (dict(shadow_value=300), "shadow_value"),
            (dict(shadow_threshold=2.0), "shadow_threshold"),
            (dict(detect_shadows="yes"), "detect_shadows"),
            (dict(state_dtype=torch.int32), "state_dtype"),
        ],
    )
    def test_bad_parameters_are_named(self, kwargs, match):
        with pytest.raises((ValueError, TypeError), match=match):
            BackgroundSubtractorMOG2(**kwargs)

    def test_bad_frames(self):
        model = BackgroundSubtractorMOG2(compile=False)
        with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
            model(torch.zeros(3, 4, 4, dtype=torch.uint8))
        with pytest.raises(ShapeError, match="C = 1"):
            model(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
        with pytest.raises(TypeError, match="uint8 or floating"):
            model(torch.zeros(1, 3, 4, 4, dtype=torch.int16))
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(torch.full((1, 3, 4, 4), float("nan")))
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(torch.full((1, 3, 4, 4), float("inf")))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            model(torch.full((1, 3, 4, 4), 128.0))
        with pytest.raises(ValueError, match="are on meta"):
            model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8, device="meta"))
        with pytest.raises(TypeError, match="learning_rate"):
            model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), learning_rate="fast")
        with pytest.raises(TypeError, match="torch.Tensor"):
            model(np.zeros((1, 3, 4, 4), dtype=np.uint8))
        assert not model.is_initialized  # nothing above shaped the state
        model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
        with pytest.raises(ShapeError, match="reset"):
            model(torch.zeros(1, 3, 5, 4, dtype=torch.uint8))
        with pytest.raises(ShapeError, match="reset"):
            model(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
        with pytest.raises(RuntimeError, match="frame"):
            BackgroundSubtractorMOG2().background_image()

    def test_bad_state_is_refused_on_load(self):
        model = BackgroundSubtractorMOG2(n_mixtures=3, compile=False)
        model(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
        state = model.state_dict()
        with pytest.raises(RuntimeError, match="n_mixtures=5"):
            BackgroundSubtractorMOG2(compile=False).load_state_dict(state)
        bad = {**state, "n_modes": torch.full_like(state["n_modes"], 4)}
        with pytest.raises(RuntimeError, match="n_modes"):
            BackgroundSubtractorMOG2(n_mixtures=3, compile=False).load_state_dict(bad)
        bad = {**state, "weight": torch.full_like(state["weight"], float("nan"))}
        with pytest.raises(RuntimeError, match="NaN"):
            BackgroundSubtractorMOG2(n_mixtures=3, compile=False).load_state_dict(bad)

    def test_update_function_checks_shapes(self):
        frame = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
        w, m, v = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 2, 2)
        with pytest.raises(ShapeError, match="n_modes"):
            mog2_update(frame, w, m, v, torch.zeros(1, 2, 3), 0.5)
        with pytest.raises(ShapeError, match="one variance per mode"):
            mog2_update(frame, w, m, torch.ones(1, 2, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.uint8), 0.5)

    def test_docstring_examples(self):
        result = doctest.testmod(mog2_module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 5 and result.failed == 0


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.cuda
def test_cuda_equals_cpu_within_the_parity_bound():
    frames, _, _ = shadow_scene(3, seed=6)
    cpu = run(BackgroundSubtractorMOG2(compile=False), frames)
    model = BackgroundSubtractorMOG2().to("cuda")
    gpu = run(model, torch.from_numpy(frames).to("cuda"))
    assert gpu.device.type == "cuda"
    agreement = (gpu.cpu() == cpu).float().mean().item()
    assert agreement >= 0.999, f"CUDA vs CPU masks agree on {agreement:.4%} of pixels"


# ----------------------------------------------------------------------------------------
# Compilation
# ----------------------------------------------------------------------------------------
class TestCompile:
    def test_compile_failure_falls_back_with_a_warning(self, monkeypatch):
        def failing(config, cpp_wrapper):
            raise RuntimeError(f"no compiler (cpp_wrapper={cpp_wrapper})")

        monkeypatch.setattr(mog2_module, "_compiled", failing)
        frames = random_sequence(3, seed=1, t=5)
        with pytest.raises(RuntimeError, match="cpp_wrapper=False") as info:
            run(BackgroundSubtractorMOG2(compile=True), frames)
        assert any("C++ wrapper failed first" in note for note in getattr(info.value, "__notes__", []))
        from torchgmm import _aot

        monkeypatch.setattr(_aot, "run_ahead_of_time", lambda *args: None)  # its package failed too
        with pytest.warns(RuntimeWarning, match="running eagerly"):
            got = run(BackgroundSubtractorMOG2(), frames)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(got, run(BackgroundSubtractorMOG2(compile=False), frames))

    @pytest.mark.slow  # compiling the fused step takes a minute or more on a busy 2-core machine
    def test_compiled_equals_eager(self):
        frames = torch.from_numpy(random_sequence(3, seed=23, t=40, h=8, w=10))
        rates = [-1.0] * 30 + [0.0, 0.0, 0.3, 0.3] + [-1.0] * 6
        eager = BackgroundSubtractorMOG2(**SETTINGS[0], compile=False)
        compiled = BackgroundSubtractorMOG2(**SETTINGS[0], compile=True)
        assert torch.equal(run(compiled, frames, rates), run(eager, frames, rates))
        assert_state_equal(state_of(compiled), state_of(eager))
        assert torch.equal(compiled.background_image(), eager.background_image())


# ----------------------------------------------------------------------------------------
# The scripts that measure parity and speed against OpenCV
# ----------------------------------------------------------------------------------------
SCRIPTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"


def _run_script(name: str, *args: str, cwd) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow  # subprocesses that import torch and cv2
def test_parity_script_on_a_generated_sequence(tmp_path):
    cv2 = pytest.importorskip("cv2")
    frames, _, _ = shadow_scene(3, seed=8, t=120)
    folder = tmp_path / "seq" / "input"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames, start=1):  # CDnet's layout, lossless
        cv2.imwrite(str(folder / f"in{t:06d}.png"), frame.transpose(1, 2, 0))
        (folder / f"in{t:06d}.png").rename(folder / f"in{t:06d}.jpg")  # cv2.imread reads by content
    out = tmp_path / "parity.json"
    _run_script(
        "parity_mog2.py",
        "--video",
        str(folder),
        "--frames",
        "120",
        "--compile",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    import json

    result = json.loads(out.read_text())
    assert len(result["rows"]) == 4 and result["target_met"]
    for row in result["rows"]:
        assert row["sequence"] == "seq" and row["frames"] == 120 and "error" not in row
        assert row["mask_agreement"] >= 0.999 and row["background_within_1"] >= 0.999
        assert row["opencv_foreground"] + row["opencv_shadow"] > 0.003  # something to agree on


@pytest.mark.slow
def test_bench_background_mog2_mode(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "bench.json"
    _run_script(
        "bench_background.py",
        "--mode",
        "mog2",
        "--sizes",
        "64x48",
        "--channels",
        "3",
        "--components",
        "5",
        "--frames",
        "6",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--methods",
        "torchgmm_mog2_eager",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    import json

    result = json.loads(out.read_text())
    methods = {r["method"]: r for r in result["cpu"]}
    assert set(methods) == {"mog2", "torchgmm_mog2_eager"} and result["meta"]["mode"] == "mog2"
    for row in methods.values():
        assert row["frames"] == 6 and "error" not in row and row["detect_shadows"]
        assert row["ratio"] == pytest.approx(row["ms_per_frame"] / methods["mog2"]["ms_per_frame"])
