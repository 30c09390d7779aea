"""Per-stream state of the batched per-pixel models (StreamBatchMixin), checked against
separate runs: a stream taken out of a batch, or streams joined into one, learn on exactly as
the batch (or the separate models) would."""

from __future__ import annotations

import pytest
import torch

from torchgmm import BackgroundSubtractorMOG
from torchgmm.mog2 import BackgroundSubtractorMOG2

MODELS = {
    "mog": lambda: BackgroundSubtractorMOG(n_components=3, learning_rate=0.05, compile=False),
    "mog2": lambda: BackgroundSubtractorMOG2(n_mixtures=4, history=20, compile=False),
}


def _masks(out) -> torch.Tensor:  # noqa: ANN001 - MOG: (B, 1, H, W); MOG2: (B, H, W)
    return out if out.ndim == 4 else out[:, None]


@pytest.fixture
def streams() -> torch.Tensor:
    """(T, B=3, 3, H, W) uint8: three different noisy scenes, an object entering each."""
    g = torch.Generator().manual_seed(5)
    t, b, h, w = 24, 3, 10, 12
    base = torch.randint(0, 256, (1, b, 3, h, w), generator=g).float()
    frames = base + torch.randn(t, b, 3, h, w, generator=g) * 4
    frames[12:, 0, :, 2:6, 3:8] = 250.0
    frames[16:, 2, :, 5:9, 1:4] = 5.0
    return frames.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("name", MODELS)
def test_stream_state_continues_as_the_batch(name, streams):
    batch, alone = MODELS[name](), MODELS[name]()
    for frame in streams[:10]:
        batch(frame)
    alone.load_state_dict(batch.stream_state(1))
    assert alone.weight.shape[0] == 1
    for frame in streams[10:]:
        assert torch.equal(_masks(alone(frame[1:2])), _masks(batch(frame))[1:2])
    assert torch.equal(alone.mean, batch.mean[1:2])


@pytest.mark.parametrize("name", MODELS)
def test_load_stream_states_joins_separate_runs(name, streams):
    separate = [MODELS[name]() for _ in range(3)]
    for frame in streams[:10]:
        for i, model in enumerate(separate):
            model(frame[i : i + 1])
    joined = MODELS[name]()
    joined.load_stream_states([m.stream_state(0) for m in separate])
    for frame in streams[10:]:
        expected = torch.cat([_masks(m(frame[i : i + 1])) for i, m in enumerate(separate)])
        assert torch.equal(_masks(joined(frame)), expected)


@pytest.mark.parametrize("name", MODELS)
def test_keep_streams_drops_the_others(name, streams):
    batch, pair = MODELS[name](), MODELS[name]()
    for frame in streams[:10]:
        batch(frame)
        pair(frame[[2, 0]])
    batch.keep_streams([2, 0])
    for frame in streams[10:]:
        assert torch.equal(_masks(batch(frame[[2, 0]])), _masks(pair(frame[[2, 0]])))


@pytest.mark.parametrize("name", MODELS)
def test_stream_state_is_a_copy_and_streams_must_be_at_one_frame(name, streams):
    model = MODELS[name]()
    model(streams[0])
    state = model.stream_state(0)
    before = state["mean"].clone()
    model(streams[1])
    assert torch.equal(state["mean"], before)  # learning on does not change a taken state
    later = model.stream_state(1)
    with pytest.raises(ValueError, match="only streams at the same frame can be batched"):
        MODELS[name]().load_stream_states([state, later])
    with pytest.raises(ValueError, match="`states` is empty"):
        MODELS[name]().load_stream_states([])
    fresh = MODELS[name]()
    fresh.keep_streams([0])  # no state yet: nothing to keep, no error
    assert not fresh.is_initialized
