"""compile="aot": the per-pixel models' step through AOTInductor packages (torchgmm._aot).

The reference is the eager step (the same arithmetic, no compiler): the package's masks and
states must equal it bit for bit, as the torch.compile step's do. A package is compiled once
and then loaded from its folder; a failed build falls back to torch.compile with a warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from torchgmm import _aot
from torchgmm import background as bg
from torchgmm.background import BackgroundSubtractorMOG
from torchgmm.mog2 import BackgroundSubtractorMOG2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def packages(tmp_path, monkeypatch):
    """A fresh package folder and no AOT step or failure left from another test."""
    monkeypatch.setattr(_aot, "package_folder", lambda: tmp_path / "aot")
    monkeypatch.setattr(_aot, "_steps", {})
    monkeypatch.setattr(_aot, "_failures", set())
    return tmp_path / "aot"


def _frames(t: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    background = torch.randint(40, 200, (1, 3, 10, 14), generator=g, dtype=torch.uint8)
    frames = background.repeat(t, 1, 1, 1)
    frames[t // 2 :, :, 2:6, 3:8] = 250  # an object arrives
    noise = torch.randint(-3, 4, frames.shape, generator=g)
    return (frames.int() + noise).clamp(0, 255).to(torch.uint8)


def _run(model, frames):  # noqa: ANN001, ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback
        masks = [model.apply(f[None]) for f in frames]
    return torch.cat(masks), {k: v.clone() for k, v in model.state_dict().items()}


MODELS = {
    "mog": lambda **kw: BackgroundSubtractorMOG(n_components=2, **kw),
    "mog-shadows": lambda **kw: BackgroundSubtractorMOG(n_components=2, detect_shadows=True, **kw),
    "mog2": lambda **kw: BackgroundSubtractorMOG2(n_mixtures=2, **kw),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_aot_step_equals_eager_and_is_loaded_not_rebuilt(name, packages, monkeypatch):
    frames = _frames()
    masks, state = _run(MODELS[name](compile="aot"), frames)
    want_masks, want_state = _run(MODELS[name](compile=False), frames)
    assert torch.equal(masks, want_masks) and int((masks == 255).sum()) > 0
    assert state.keys() == want_state.keys()
    for key in state:
        assert torch.equal(state[key], want_state[key]), key
    built = sorted(packages.glob("*.pt2"))
    assert len(built) == 1  # one configuration: one package
    # a new process (no AOT step in memory) loads the package instead of compiling it again
    monkeypatch.setattr(_aot, "_steps", {})
    monkeypatch.setattr(_aot.AotStep, "_build", lambda *a: pytest.fail("the package was compiled again"))
    again, _ = _run(MODELS[name](compile="aot"), frames)
    assert torch.equal(again, want_masks)


def test_a_failed_build_falls_back_to_torch_compile_with_a_warning(packages, monkeypatch):
    def broken(self, path, leaves, spec):  # noqa: ANN001, ANN202
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_aot.AotStep, "_build", broken)
    frames = _frames(4)
    model = MODELS["mog"](compile="aot")
    with pytest.warns(RuntimeWarning, match=r"compile='aot'.*RuntimeError: no C\+\+ compiler.*using torch.compile"):
        first = model.apply(frames[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # said once per configuration
        rest = [model.apply(f[None]) for f in frames[1:]]
    want, _ = _run(MODELS["mog"](compile=False), frames)
    assert torch.equal(torch.cat([first, *rest]), want)
    assert not list(packages.glob("*.pt2")) and not list(packages.glob(".*"))  # no partial file left


@pytest.mark.parametrize("cls", [BackgroundSubtractorMOG, BackgroundSubtractorMOG2])
@pytest.mark.parametrize("value", ["AOT", 1, "yes"])
def test_compile_mode_is_checked(cls, value):
    with pytest.raises(ValueError, match=r"`compile` must be None, True, False or 'aot'"):
        cls(compile=value)


def test_other_settings_and_frame_sizes_get_their_own_results(packages):
    # settings are inputs (or part of a package's name), never a stale constant of another model
    frames = _frames()
    for kw in (dict(learning_rate=0.2, match_sigma=1.5, init_var=60.0), dict(learning_rate=0.01)):
        masks, _ = _run(MODELS["mog"](compile="aot", **kw), frames)
        want, _ = _run(MODELS["mog"](compile=False, **kw), frames)
        assert torch.equal(masks, want), kw
    wide = torch.nn.functional.pad(frames, (0, 6))  # another frame size
    masks, _ = _run(MODELS["mog"](compile="aot"), wide)
    want, _ = _run(MODELS["mog"](compile=False), wide)
    assert torch.equal(masks, want)
    # the settings are inputs and the frame size is dynamic: one package served all of them
    assert len(list(packages.glob("*.pt2"))) == 1


def test_the_package_name_follows_the_thread_count_and_the_configuration():
    # the compiled kernel's OpenMP thread count is fixed: another count needs another package
    step = _aot.AotStep(bg._mog_step, ("config", 1))
    threads = torch.get_num_threads()
    one = step.package_path(("signature",))
    try:
        torch.set_num_threads(threads + 1)
        assert step.package_path(("signature",)) != one
    finally:
        torch.set_num_threads(threads)
    assert step.package_path(("signature",)) == one
    assert step.package_path(("other signature",)) != one
    assert _aot.AotStep(bg._mog_step, ("config", 2)).package_path(("signature",)) != one
