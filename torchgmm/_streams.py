"""Per-stream views of a per-pixel model's batched state (one home for both background models).

A per-pixel background model keeps B independent streams in batch-first buffers
(``(B, K, H, W)``, ``(B, K, C, H, W)``, ``(B, H, W)``) beside 0-d counters shared by the batch
(``frames_seen``). Jobs that checkpoint streams one by one, drop finished streams from a batch,
or batch streams resumed from separate checkpoints need the state of one stream, a subset of
streams, or several streams joined: the model owns that layout, so it answers these here and
the jobs never index its buffers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class StreamBatchMixin:
    """``stream_state`` / ``keep_streams`` / ``load_stream_states`` for an ``nn.Module`` whose
    batch-first buffers have B = the streams and whose 0-d buffers are shared by the batch.

    The class using it provides ``is_initialized`` and the ``nn.Module`` state-dict methods.

    Example:
        >>> from torchgmm import BackgroundSubtractorMOG
        >>> model = BackgroundSubtractorMOG(compile=False)
        >>> _ = model(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))  # three streams
        >>> model.stream_state(1)["weight"].shape  # (1, K, H, W)
        torch.Size([1, 3, 4, 4])
        >>> model.keep_streams([0, 2]); model.weight.shape[0]
        2
    """

    def stream_state(self, index: int) -> dict[str, Tensor]:
        """The state of stream ``index`` alone, as a ``state_dict`` of a one-stream model.

        Batch-first buffers are sliced to ``[index : index + 1]``; 0-d buffers (shared by the
        batch, e.g. ``frames_seen``) are kept. Copied to the CPU, so the result holds only
        this stream (a checkpoint of it does not carry the whole batch) and does not change
        when the model learns on.

        Returns:
            ``{name: tensor}`` loadable into a fresh model with ``load_state_dict``.
        """
        return {
            k: (v[index : index + 1] if v.ndim else v).detach().to("cpu", copy=True)
            for k, v in self.state_dict().items()  # type: ignore[attr-defined]
        }

    def keep_streams(self, indices: Sequence[int]) -> None:
        """Keep only the streams ``indices`` (in that order), e.g. when others have ended.

        Does nothing before the first frame (no state yet) or when ``indices`` is empty.
        """
        if not self.is_initialized or not indices:  # type: ignore[attr-defined]
            return
        state = self.state_dict()  # type: ignore[attr-defined]
        index = torch.tensor(list(indices), dtype=torch.int64, device=next(iter(state.values())).device)
        self.load_state_dict({k: v.index_select(0, index) if v.ndim else v for k, v in state.items()})  # type: ignore[attr-defined]

    def load_stream_states(self, states: Sequence[dict[str, Tensor]]) -> None:
        """Load several one-stream states (:meth:`stream_state`, checkpoints) as one batch.

        Batch-first buffers are concatenated in the order of ``states``; 0-d buffers must be
        equal in every state (streams of one batch advance together) and are taken from the
        first.

        Raises:
            ValueError: ``states`` is empty, or their shared counters differ.
        """
        if not states:
            raise ValueError("`states` is empty: give at least one stream's state.")
        first = states[0]
        for name, value in first.items():
            if value.ndim == 0 and any(not torch.equal(s[name], value) for s in states[1:]):
                raise ValueError(
                    f"the streams' `{name}` differ ({[s[name].item() for s in states]}): only streams at the "
                    "same frame can be batched."
                )
        self.load_state_dict({k: torch.cat([s[k] for s in states]) if v.ndim else v for k, v in first.items()})  # type: ignore[attr-defined]
