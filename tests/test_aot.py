"""compile="aot": the per-pixel models' step through AOTInductor packages (torchgmm._aot).

The reference is the eager step (the same arithmetic, no compiler): the package's masks and
states must equal it bit for bit, as the torch.compile step's do, also when a run starts
eagerly while its package is built by a background process and switches to it midway. A
package is compiled once and then loaded from its folder; a failed build falls back to
torch.compile with a warning.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from torchgmm import _aot
from torchgmm import background as bg
from torchgmm.background import BackgroundSubtractorMOG
from torchgmm.mog2 import BackgroundSubtractorMOG2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def packages(tmp_path, monkeypatch):
    """A fresh package folder and no AOT step, build or failure left from another test."""
    monkeypatch.setattr(_aot, "package_folder", lambda: tmp_path / "aot")
    monkeypatch.setattr(_aot, "_steps", {})
    monkeypatch.setattr(_aot, "_failures", set())
    monkeypatch.setattr(_aot, "_builds", {})
    yield tmp_path / "aot"
    _aot.stop_builds()


def _frames(t: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    background = torch.randint(40, 200, (1, 3, 10, 14), generator=g, dtype=torch.uint8)
    frames = background.repeat(t, 1, 1, 1)
    frames[t // 2 :, :, 2:6, 3:8] = 250  # an object arrives
    noise = torch.randint(-3, 4, frames.shape, generator=g)
    return (frames.int() + noise).clamp(0, 255).to(torch.uint8)


def _run(model, frames, switch_at: int | None = None):  # noqa: ANN001, ANN202
    """The masks and the final state; with ``switch_at``, the package's build is waited for
    after that many (eager) frames, so the rest run through the package."""
    masks = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback
        for i, f in enumerate(frames):
            if i == switch_at:
                assert _aot._builds, "no build under way: the first frames did not run eagerly"
                _aot.wait_for_builds()
            masks.append(model.apply(f[None]))
    return torch.cat(masks), {k: v.clone() for k, v in model.state_dict().items()}


def _used_a_package() -> bool:
    return any(step.runners for step in _aot._steps.values())


MODELS = {
    "mog": lambda **kw: BackgroundSubtractorMOG(n_components=2, **kw),
    "mog-shadows": lambda **kw: BackgroundSubtractorMOG(n_components=2, detect_shadows=True, **kw),
    "mog2": lambda **kw: BackgroundSubtractorMOG2(n_mixtures=2, **kw),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_aot_step_equals_eager_and_is_loaded_not_rebuilt(name, packages, monkeypatch):
    frames = _frames()
    # three eager frames while the package is built, the rest through it
    masks, state = _run(MODELS[name](compile="aot"), frames, switch_at=3)
    assert _used_a_package()
    want_masks, want_state = _run(MODELS[name](compile=False), frames)
    assert torch.equal(masks, want_masks) and int((masks == 255).sum()) > 0
    assert state.keys() == want_state.keys()
    for key in state:
        assert torch.equal(state[key], want_state[key]), key
    assert len(list(packages.glob("*.pt2"))) == 1  # one configuration: one package
    assert not list(packages.glob(".*"))  # no request, log or partial file left
    # a new process (no AOT step in memory) loads the package instead of compiling it again
    monkeypatch.setattr(_aot, "_steps", {})
    monkeypatch.setattr(_aot._Build, "start", lambda *a: pytest.fail("the package was compiled again"))
    again, _ = _run(MODELS[name](compile="aot"), frames)
    assert torch.equal(again, want_masks) and _used_a_package()


def test_a_failed_build_falls_back_to_torch_compile_with_a_warning(packages, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('no C++ compiler'); sys.exit(3)"]
    monkeypatch.setattr(_aot, "_build_command", lambda request: failing)
    frames = _frames(4)
    model = MODELS["mog"](compile="aot")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        first = model.apply(frames[:1])  # eager while the build runs
    _aot.wait_for_builds()
    with pytest.warns(RuntimeWarning, match=r"compile='aot'.*exited with 3: no C\+\+ compiler.*using torch.compile"):
        second = model.apply(frames[1:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # said once per configuration
        rest = [model.apply(f[None]) for f in frames[2:]]
    want, _ = _run(MODELS["mog"](compile=False), frames)
    assert torch.equal(torch.cat([first, second, *rest]), want)
    assert not list(packages.glob("*.pt2")) and not list(packages.glob(".*"))  # request and log removed


def test_a_stopped_build_leaves_no_file(packages):
    model = MODELS["mog"](compile="aot")
    model.apply(_frames(1))
    (build,) = _aot._builds.values()
    _aot.stop_builds()
    assert build.process.returncode is not None and not _aot._builds
    assert not list(packages.glob("*.pt2")) and not list(packages.glob(".*"))


@pytest.mark.parametrize("cls", [BackgroundSubtractorMOG, BackgroundSubtractorMOG2])
@pytest.mark.parametrize("value", ["AOT", 1, "yes"])
def test_compile_mode_is_checked(cls, value):
    with pytest.raises(ValueError, match=r"`compile` must be None, True, False or 'aot'"):
        cls(compile=value)


def test_other_settings_and_frame_sizes_get_their_own_results(packages):
    # settings are inputs (or part of a package's name), never a stale constant of another model
    frames = _frames()
    for i, kw in enumerate((dict(learning_rate=0.2, match_sigma=1.5, init_var=160.0), dict(learning_rate=0.01))):
        masks, _ = _run(MODELS["mog"](compile="aot", **kw), frames, switch_at=1 if i == 0 else None)
        want, _ = _run(MODELS["mog"](compile=False, **kw), frames)
        assert torch.equal(masks, want), kw
    wide = torch.nn.functional.pad(frames, (0, 6))  # another frame size
    masks, _ = _run(MODELS["mog"](compile="aot"), wide)
    want, _ = _run(MODELS["mog"](compile=False), wide)
    assert torch.equal(masks, want)
    # the settings are inputs and the frame size is dynamic: one package served all of them
    assert len(list(packages.glob("*.pt2"))) == 1 and _used_a_package()


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


def test_the_build_example_is_a_corner_in_the_same_layout():
    # H and W are dynamic: the builder gets a corner of each per-pixel tensor, laid out as the
    # model's (a package's name and its compiled strides follow the layout), not a 4K state
    state = bg._empty_component_major(torch.Size([1, 3, 5, 40, 50]), torch.empty(0)).normal_()
    for x in (
        state,
        torch.randn(2, 3, 40, 50),
        torch.randn(2, 3, 40, 50).contiguous(memory_format=torch.channels_last),
    ):
        corner = _aot._small_example(x, height=8, width=12)
        assert corner.shape[-2:] == (8, 12) and corner.is_contiguous() == x.is_contiguous()
        assert _aot._describe(corner) == _aot._describe(x) and torch.equal(corner, x[..., :8, :12])
    assert _aot._small_example(state, 8, 12).stride() == bg._component_major_strides(torch.Size([1, 3, 5, 8, 12]))
    assert _aot._small_example(state) is not state and torch.equal(_aot._small_example(state), state)  # < 480x640
    assert _aot._small_example(0.5) == 0.5 and _aot._small_example(torch.tensor(2.0)).shape == ()


@pytest.mark.parametrize("name", ["mog", "mog2"])
def test_the_cpu_default_is_the_package_and_true_is_torch_compile(name, packages):
    frames = _frames(3)
    _run(MODELS[name](), frames[:1])  # compile=None: the first frame eagerly, the package building
    assert len(_aot._builds) == 1
    _aot.stop_builds()
    _run(MODELS[name](compile=True), frames[:1])
    assert not _aot._builds and not list(packages.glob("*"))  # torch.compile: no package involved


def test_a_build_under_way_in_another_process_is_waited_for(packages, monkeypatch):
    # a second job (or a Ray worker) finds the first one's builder at work: it runs eagerly
    # without starting its own, loads that package once built, and builds one itself when
    # a builder is gone without leaving a package
    frames = _frames(6)
    MODELS["mog"](compile="aot").apply(frames[:1])
    ((path, other),) = _aot._builds.items()
    del _aot._builds[path]  # from now on, another process's builder
    assert _aot._marker(path).read_text() == str(other.process.pid)
    monkeypatch.setattr(_aot, "_steps", {})  # a new process
    model = MODELS["mog"](compile="aot")
    masks = [model.apply(frames[:1])]
    assert not _aot._builds and not _aot._steps[next(iter(_aot._steps))].runners  # eager, no second build
    other.process.wait()
    masks += [model.apply(f[None]) for f in frames[1:]]
    assert _used_a_package() and not _aot._marker(path).exists()  # the builder removed its marker
    want, _ = _run(MODELS["mog"](compile=False), frames)
    assert torch.equal(torch.cat(masks), want)
    other.finish()
    path.unlink()  # a builder that died without a package: its marker names a dead process
    _aot._marker(path).write_text(str(other.process.pid))
    monkeypatch.setattr(_aot, "_steps", {})
    MODELS["mog"](compile="aot").apply(frames[:1])
    assert path in _aot._builds


@pytest.mark.parametrize("env", [None, "relative/cache"])
def test_the_cache_folder_is_inductors_without_importing_it(env, monkeypatch, tmp_path):
    # named as Inductor names it (which imports Inductor and Dynamo: about a second)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "recorded")  # restored afterwards: cache_dir() sets it
    if env is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", env)
    ours = _aot.inductor_cache_dir()
    assert ours == Path(cache_dir()) and ours.is_absolute()
