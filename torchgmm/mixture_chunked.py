"""Exact EM over data streamed in chunks, on one process or across a process group.

:func:`torchgmm.mixture.fit_gaussian_mixture` and :class:`~torchgmm.mixture.GaussianMixture`
hand a chunked source (or a ``process_group``) to :func:`fit_chunked`. A source is re-read
once per pass: a list or tuple of chunks, a ``DataLoader``, or a zero-argument callable
returning a fresh iterator (a generator factory). A chunk is a ``(N_i, D)`` or
``(B, N_i, D)`` tensor, or an ``(x, sample_weight)`` pair with weights ``(N_i,)`` /
``(B, N_i)`` (a ``DataLoader`` over a ``TensorDataset`` yields ``[x]`` or ``[x, w]``:
both are understood).

The passes over the data (each one streams every chunk once):

1. *Summary*: sample count, total weight, weighted sum (for the mean the data are centred
   on, as the in-memory fit centres them), per-feature min and max (for the overflow check),
   and the checks of every chunk's shape and values (errors name the chunk's index).
2. *Initialisation*: ``"range"`` takes three passes (second moment for the principal axis,
   the projections' range, the intervals' statistics) and equals the in-memory init; the
   k-means family (``"kmeans"``, ``"kmeans++"``, ``"k-means++"``, ``"random_from_data"``)
   runs on a uniform sample of at most :data:`INIT_SAMPLE_SIZE` samples per problem (all of
   them when N is at most that, which then equals the in-memory init with the same
   generator), then one pass labels every sample by its nearest centre and sums the
   statistics of the hard responsibilities (for the k-means inits); ``"random"`` draws the
   responsibilities chunk by chunk.
3. *One pass per EM iteration*: the fused E-step statistics
   (:func:`torchgmm.mixture._e_step_statistics`) of each chunk's quadratic features, summed.

With a process group every rank passes its own shard, the statistics of every pass are
summed (all-reduced) across ranks, the initialisation is made on rank 0 (from the union of
the ranks' samples) and broadcast, so every rank holds the same parameters, equal to a
one-process fit of the concatenated shards. An error on one rank (a bad chunk, a rank with
no data) is raised on every rank, so none waits forever in a collective.

Chunks on the CPU are fitted on CUDA (``device``) through pinned memory with non-blocking
copies; nothing here needs CUDA.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import torch
from torch import Tensor

from torchgmm._checks import ShapeError
from torchgmm.distributed import Collective
from torchgmm.mixture import (
    _HALF_DTYPES,
    FIT_DTYPES,
    GaussianMixtureFit,
    _add_statistics,
    _check_spread,
    _checked_generators,
    _e_step_statistics,
    _EMOptions,
    _fit_dtype,
    _given_parameters,
    _kmeans_centres,
    _m_step,
    _nearest_resp,
    _params_from_statistics,
    _principal_axis,
    _quadratic_features,
    _raise_if_failed,
    _rand,
    _range_bounds,
    _range_labels,
    _range_projection,
    _resp_statistics,
    _run_em,
    _second_moment,
    _seed_or_random_resp,
    _starting_parameters,
    _Statistics,
    _statistics_function,
)

__all__ = ["INIT_SAMPLE_SIZE", "fit_chunked", "fit_gaussian_mixture_stepwise", "stepwise_step_size"]

#: the k-means family of inits runs on a uniform sample of about this many samples
INIT_SAMPLE_SIZE = 2**17


class _Summary(NamedTuple):
    """What the first pass learns about the (global) data."""

    b: int
    n: int  #: samples per problem, over all chunks and ranks
    d: int
    batched: bool  #: the chunks were (B, N_i, D)
    weighted: bool
    shift: Tensor  #: (B, 1, D) the weighted mean the data are centred on
    total: Tensor  #: (B,) the total weight (N without weights)


class _ChunkReader:
    """Iterates a chunked source once per pass: ``(index, x (B, N_i, D), w (B, N_i) or None)``
    on the fit's device, with the shape checks of every chunk (errors name the index)."""

    def __init__(self, source: Any, device: torch.device | None, dtype: torch.dtype | None) -> None:
        if not callable(source) and iter(source) is source:
            raise TypeError(
                "`x` is a one-shot iterator, but EM reads the data once per iteration: pass a "
                "list of chunks, a DataLoader, or a zero-argument callable that returns a fresh "
                "iterator (e.g. `lambda: my_generator()`)."
            )
        self.source = source
        self.device = device
        self.dtype = dtype
        self.first: tuple[int, int, int, bool] | None = None  # (ndim, B, D, weighted)
        self.local_n: int | None = None  # samples of the first pass, for the later ones

    def __iter__(self) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        chunks = self.source() if callable(self.source) else self.source
        count = 0
        for index, item in enumerate(chunks):
            x, w = self._split(index, item)
            x, w = self._check(index, x, w)
            count += x.shape[1]
            yield index, x, w
            x = w = item = None  # not kept alive while the next chunk is read
        if self.local_n is None:
            self.local_n = count
        elif count != self.local_n:
            raise ValueError(
                f"`x` yielded {count} samples on this pass but {self.local_n} on the first: a "
                f"chunked source must yield the same data on every pass (a one-shot generator "
                f"yields nothing the second time; pass a zero-argument callable that makes a new one)."
            )

    @staticmethod
    def _split(index: int, item: Any) -> tuple[Any, Any]:
        if isinstance(item, Tensor):
            return item, None
        if isinstance(item, (tuple, list)) and len(item) in (1, 2):
            return item[0], item[1] if len(item) == 2 else None
        raise TypeError(
            f"chunk {index} of `x` must be a tensor or an (x, sample_weight) pair, got {type(item).__name__}."
        )

    def _check(self, index: int, x: Any, w: Any) -> tuple[Tensor, Tensor | None]:
        if not isinstance(x, Tensor):
            raise TypeError(f"chunk {index} of `x` must be a tensor, got {type(x).__name__}.")
        if x.ndim not in (2, 3):
            raise ShapeError(f"chunk {index} of `x` must be (N_i, D) or (B, N_i, D), got shape {tuple(x.shape)}.")
        batched = x.ndim == 3
        xb = x if batched else x.unsqueeze(0)
        b, n, d = xb.shape
        if w is not None and not isinstance(w, Tensor):
            raise TypeError(f"the sample weights of chunk {index} must be a tensor, got {type(w).__name__}.")
        if self.first is None:
            if d == 0:
                raise ShapeError(f"chunk {index} of `x` has no features (D = 0), shape {tuple(x.shape)}.")
            dtype = self.dtype if self.dtype is not None else _fit_dtype(x)
            if dtype in _HALF_DTYPES:
                dtype = torch.float32
            if dtype not in FIT_DTYPES:
                raise TypeError(f"`dtype` must be one of {FIT_DTYPES} (or half precision), got {dtype}.")
            self.dtype = dtype
            if self.device is None:
                self.device = x.device
            self.first = (x.ndim, b, d, w is not None)
        ndim0, b0, d0, weighted0 = self.first
        if x.ndim != ndim0 or b != b0 or d != d0:
            expected = f"(N_i, {d0})" if ndim0 == 2 else f"({b0}, N_i, {d0})"
            raise ShapeError(
                f"chunk {index} of `x` has shape {tuple(x.shape)}; the first chunk's was {expected}: "
                f"every chunk needs the same layout, B and D."
            )
        if n == 0:
            raise ShapeError(
                f"chunk {index} of `x` is empty (shape {tuple(x.shape)}); every chunk needs at least "
                f"one sample: leave empty chunks out of the source."
            )
        if x.is_complex():
            _fit_dtype(x)  # names the dtype
        if (w is not None) != weighted0:
            raise ValueError(
                f"chunk {index} of `x` {'has' if w is not None else 'has no'} sample weights but the "
                f"first chunk {'had' if weighted0 else 'had none'}: weight every chunk or none."
            )
        if w is not None:
            wb = w if w.ndim == 2 else w.unsqueeze(0)
            if tuple(wb.shape) != (b, n):
                raise ShapeError(
                    f"the sample weights of chunk {index} must have shape ({b}, {n}) or ({n},) to "
                    f"match its x {tuple(x.shape)}, got {tuple(w.shape)}."
                )
            w = self._move(wb)
        return self._move(xb), w

    def _move(self, t: Tensor) -> Tensor:
        """To the fit's device and dtype: from the CPU to CUDA through pinned memory,
        without blocking, then cast there (a narrower dtype crosses the bus)."""
        if t.device != self.device:
            if self.device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            t = t.to(self.device, non_blocking=True)
        return t.to(self.dtype)


def _shared_error(coll: Collective, error: BaseException | None, device: torch.device) -> None:
    """Raise ``error`` on its rank and a pointer to it on every other rank (no rank is left
    waiting in a collective); one small all-reduce, only with more than one process."""
    if not coll.active:
        if error is not None:
            raise error
        return
    flags = torch.zeros(coll.world_size, device=device)
    flags[coll.rank] = error is not None
    coll.sum_(flags)
    if error is not None:
        raise error
    bad = torch.nonzero(flags).flatten().tolist()
    if bad:
        raise ValueError(f"The fit failed on rank(s) {bad} of the process group (see the error raised there).")


def _first_pass(reader: _ChunkReader, coll: Collective, k: int) -> _Summary:
    """Pass 1: shapes, value checks, counts, the weighted mean and the overflow check."""
    error: BaseException | None = None
    sums = None
    try:
        sums = _summarise_local(reader)
    except (ValueError, TypeError) as exc:
        if not coll.active:
            raise
        error = exc
    device = reader.device if reader.device is not None else coll.default_device()
    # Every rank's (error, N, ndim, B, D, dtype, weighted): layouts must agree.
    first = reader.first or (0, 0, 0, False)
    dtype_code = FIT_DTYPES.index(reader.dtype) if reader.dtype in FIT_DTYPES else -1
    info = coll.all_gather_ints(
        [error is not None, reader.local_n or 0, first[0], first[1], first[2], dtype_code, first[3]], device
    )
    _shared_error(coll, error, device)
    if any(row[0] for row in info):
        raise ValueError(f"The fit failed on rank(s) {[r for r, row in enumerate(info) if row[0]]}.")
    empty = [r for r, row in enumerate(info) if row[1] == 0]
    if empty:
        raise ValueError(
            f"`x` has no data on rank(s) {empty} of the process group: "
            f"every rank needs at least one sample (give it a shard, or leave it out of the group)."
            if coll.active
            else "`x` yielded no chunks: a chunked source needs at least one (N_i, D) chunk."
        )
    layouts = {tuple(row[2:]) for row in info}
    if len(layouts) > 1:
        raise ShapeError(
            "The ranks' shards disagree in layout (ndim, B, D, dtype, weighted): "
            + ", ".join(f"rank {r}: {tuple(row[2:])}" for r, row in enumerate(info))
        )
    n = sum(row[1] for row in info)
    ndim, b, d, weighted = reader.first
    _, weight_sum, weighted_sum, low, high = sums
    for total_part in (weight_sum, weighted_sum):
        coll.sum_(total_part)
    coll.min_(low)
    coll.max_(high)
    if n < k:
        raise ValueError(f"`x` has N={n} samples per problem, fewer than n_components={k}.")
    if weighted and bool((weight_sum <= 0).any()):
        raise ValueError(
            "`sample_weight` sums to zero for at least one problem; every problem needs some positive weight."
        )
    total = weight_sum if weighted else weight_sum.new_full((b,), n)
    shift = (weighted_sum / total.unsqueeze(-1)).unsqueeze(1)  # (B, 1, D)
    # |x - mean| <= max(high - mean, mean - low): the bound the in-memory check computes
    peak = float(torch.maximum(high - shift[:, 0], shift[:, 0] - low).amax())
    _check_spread(peak, reader.dtype, n, d)
    return _Summary(b, n, d, ndim == 3, weighted, shift, total)


def _summarise_local(reader: _ChunkReader) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """This rank's count, sum of weights (B,), weighted sum (B, D), min and max (B, D).

    The values of every chunk are checked with one host sync at the end of the pass: the
    error names the first chunk with NaN/inf (or negative weights).
    """
    count = 0
    weight_sum = weighted_sum = low = high = None
    bad_x: list[Tensor] = []
    bad_w: list[Tensor] = []
    for _, x, w in reader:
        count += x.shape[1]
        part_w = x.new_full((x.shape[0],), x.shape[1]) if w is None else w.sum(1)
        part_sum = x.sum(1) if w is None else (w.unsqueeze(-1) * x).sum(1)
        part_low, part_high = x.amin(1), x.amax(1)
        if weight_sum is None:
            weight_sum, weighted_sum, low, high = part_w, part_sum, part_low, part_high
        else:
            weight_sum, weighted_sum = weight_sum + part_w, weighted_sum + part_sum
            low, high = torch.minimum(low, part_low), torch.maximum(high, part_high)
        bad_x.append(~torch.isfinite(part_sum).all() if w is None else ~torch.isfinite(x).all())
        if w is not None:
            bad_w.append(~torch.isfinite(w).all() | (w < 0).any())
    if count == 0:
        empty = torch.zeros(0)
        return 0, empty, empty, empty, empty
    flags = torch.stack(bad_x + bad_w).cpu()  # the pass's one host sync
    if bool(flags.any()):
        first = int(torch.nonzero(flags)[0])
        if first < len(bad_x):
            raise ValueError(f"chunk {first} of `x` holds NaN or inf; fitting needs finite values.")
        raise ValueError(
            f"the sample weights of chunk {first - len(bad_x)} hold NaN, inf or negative values; "
            f"`sample_weight` must be finite and non-negative."
        )
    # NaN in x makes its sum NaN (checked above), but inf - inf can hide: min/max also tell
    if not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
        raise ValueError("a chunk of `x` holds inf; fitting needs finite values.")
    return count, weight_sum, weighted_sum, low, high


def _features(x: Tensor, summary: _Summary, covariance_type: str) -> Tensor:
    return _quadratic_features(x - summary.shift, covariance_type)


def _reduced(
    coll: Collective, stats: _Statistics | None, like: _Statistics, error: BaseException | None = None
) -> _Statistics:
    """The statistics summed over the ranks, as one all-reduce of one flat buffer.

    The buffer also carries one flag per rank, set where ``error`` (this rank's failure to
    read its shard on this pass) is not None: every rank then raises (the failing one its
    own error), none waits in the next collective. Reading the flags is one host sync per
    pass, with more than one process only.
    """
    if stats is None:  # this rank failed on this pass: zeros, and its flag
        stats = _Statistics(*(torch.zeros_like(t) for t in like))
    if not coll.active:
        if error is not None:
            raise error
        return stats
    flags = stats.nk.new_zeros(coll.world_size)
    flags[coll.rank] = error is not None
    flat = torch.cat([t.reshape(-1) for t in stats] + [flags])
    coll.sum_(flat)
    if error is not None:
        raise error
    bad = torch.nonzero(flat[-coll.world_size :]).flatten().tolist()
    if bad:
        raise ValueError(f"The fit failed on rank(s) {bad} of the process group (see the error raised there).")
    parts = flat[: -coll.world_size].split([t.numel() for t in stats])
    return _Statistics(*(p.view_as(t) for p, t in zip(parts, stats)))


def _like_statistics(
    summary: _Summary, k: int, covariance_type: str, device: torch.device, dtype: torch.dtype
) -> _Statistics:
    f = _quadratic_features(torch.zeros(1, 1, summary.d, device=device, dtype=dtype), covariance_type).shape[1]
    b = summary.b
    return _Statistics(
        torch.zeros(b, k, device=device, dtype=dtype),
        torch.zeros(b, k, f, device=device, dtype=dtype),
        torch.zeros(b, device=device, dtype=dtype),
    )


def _resp_pass(
    reader: _ChunkReader,
    summary: _Summary,
    coll: Collective,
    options: _EMOptions,
    make_resp: Any,
    like: _Statistics,
) -> tuple[Tensor, Tensor, Tensor]:
    """One pass summing the statistics of ``make_resp(centred x (B, N_i, D))`` (B, K, N_i);
    the M-step's (weights, means, cov) from them."""
    stats = None
    for _, x, w in reader:
        centred = x - summary.shift
        features = _quadratic_features(centred, options.covariance_type)
        stats = _add_statistics(stats, _resp_statistics(features, make_resp(centred), w))
        x = w = centred = features = None  # freed before the next chunk is read
    stats = _reduced(coll, stats, like)
    return _params_from_statistics(stats, options.covariance_type, options.reg_covar, summary.d)


def _sample(reader: _ChunkReader, summary: _Summary, coll: Collective, generator: Any) -> tuple[Tensor, Tensor | None]:
    """A uniform sample of the (centred) data for the k-means family of inits, gathered from
    every rank in rank order: ``(x (B, S, D), w (B, S) or None)``.

    Every sample is kept when N <= INIT_SAMPLE_SIZE; otherwise each is kept with probability
    INIT_SAMPLE_SIZE / N (one draw per sample, shared by the problems; with one generator per
    problem each problem draws its own and the others' picks get weight 0).
    """
    keep_all = summary.n <= INIT_SAMPLE_SIZE
    p = INIT_SAMPLE_SIZE / summary.n
    xs, ws = [], []
    per_problem = not (generator is None or isinstance(generator, torch.Generator))
    for _, x, w in reader:
        centred = x - summary.shift
        if keep_all:
            xs.append(centred)
            ws.append(w)
            continue
        rows = summary.b if per_problem else 1
        mask = _rand((rows, x.shape[1]), generator, device=x.device, dtype=torch.float64) < p
        union = mask.any(0)
        xs.append(centred[:, union])
        if per_problem:
            picked = mask[:, union].to(x.dtype)
            ws.append(picked if w is None else w[:, union] * picked)
        else:
            ws.append(None if w is None else w[:, union])
    x = coll.all_gather_rows(torch.cat(xs, 1))
    weighted = summary.weighted or (per_problem and not keep_all)
    w = coll.all_gather_rows(torch.cat(ws, 1)) if weighted else None
    return x, w


def _initial_parameters(
    reader: _ChunkReader,
    summary: _Summary,
    coll: Collective,
    options: _EMOptions,
    generator: Any,
    like: _Statistics,
) -> tuple[Tensor, Tensor, Tensor]:
    """(weights, means, cov) of ``options.init_params`` in centred coordinates, the same on
    every rank (made on rank 0 and broadcast)."""
    k, init, cov_type = options.n_components, options.init_params, options.covariance_type
    if init == "range":
        axis = None
        if summary.d > 1:
            second = None
            for _, x, w in reader:
                centred = x - summary.shift
                part = _second_moment(centred, torch.ones_like(centred[..., 0]) if w is None else w)
                second = part if second is None else second + part
            axis = _principal_axis(coll.sum_(second) / summary.total[:, None, None])
        low = high = None
        for _, x, w in reader:
            part_low, part_high = _range_bounds(_range_projection(x - summary.shift, axis), w)
            low = part_low if low is None else torch.minimum(low, part_low)
            high = part_high if high is None else torch.maximum(high, part_high)
        coll.min_(low)
        coll.max_(high)
        initial = _resp_pass(
            reader, summary, coll, options, lambda c: _range_labels(_range_projection(c, axis), low, high, k), like
        )
    elif init == "random":

        def random_resp(centred: Tensor) -> Tensor:
            resp = _rand((centred.shape[0], centred.shape[1], k), generator, device=centred.device, dtype=centred.dtype)
            return (resp / resp.sum(-1, keepdim=True)).mT

        initial = _resp_pass(reader, summary, coll, options, random_resp, like)
    else:
        x, w = _sample(reader, summary, coll, generator)
        ones = torch.ones_like(x[..., 0]) if w is None else w
        if init in ("kmeans", "kmeans++"):
            centres = x.new_zeros(summary.b, k, summary.d)
            if coll.rank == 0:
                centres = _kmeans_centres(x, ones, k, init, generator)
            coll.broadcast_(centres)
            initial = _resp_pass(reader, summary, coll, options, lambda c: _nearest_resp(c, centres), like)
        else:  # "k-means++", "random_from_data": each component is one sample
            if coll.rank == 0:
                resp = _seed_or_random_resp(x, ones, w, k, init, generator)
                initial = _m_step(_quadratic_features(x, cov_type), resp, w, cov_type, options.reg_covar, summary.d)
            else:
                cov_shape = {
                    "full": (summary.b, k, summary.d, summary.d),
                    "tied": (summary.b, summary.d, summary.d),
                    "diag": (summary.b, k, summary.d),
                    "spherical": (summary.b, k),
                }[cov_type]
                initial = (x.new_zeros(summary.b, k), x.new_zeros(summary.b, k, summary.d), x.new_zeros(cov_shape))
    for t in initial:  # bit-identical starting parameters on every rank
        coll.broadcast_(t)
    return initial


def fit_chunked(
    x: Any,
    options: _EMOptions,
    *,
    sample_weight: Tensor | None = None,
    weights_init: Tensor | None = None,
    means_init: Tensor | None = None,
    precisions_init: Tensor | None = None,
    generator: Any = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    process_group: Any = None,
) -> tuple[GaussianMixtureFit, bool]:
    """EM over a chunked source (or a tensor shard) of this rank; see the module docstring.

    Arguments as :func:`torchgmm.mixture.fit_gaussian_mixture` (``options`` its checked scalar
    options). A tensor ``x`` (with ``sample_weight``) is one chunk: a rank's shard.

    Returns:
        ``(fit, batched)``: the :class:`~torchgmm.mixture.GaussianMixtureFit` (B = 1 for
        ``(N_i, D)`` chunks) and whether the chunks were ``(B, N_i, D)``.
    """
    if isinstance(x, Tensor):
        source: Any = [(x, sample_weight) if sample_weight is not None else x]
    else:
        if sample_weight is not None:
            raise TypeError(
                "`sample_weight` cannot be given with chunked `x`: let the chunks be (x, sample_weight) pairs."
            )
        source = x
    coll = Collective(process_group)
    reader = _ChunkReader(source, None if device is None else torch.device(device), dtype)
    summary = _first_pass(reader, coll, options.n_components)
    k = options.n_components
    fit_device, fit_dtype = reader.device, reader.dtype
    generator = _checked_generators(generator, summary.b, fit_device)
    like_x = torch.zeros(summary.b, 0, summary.d, device=fit_device, dtype=fit_dtype)
    weights0, means0, prec_chol0 = _given_parameters(
        weights_init, means_init, precisions_init, like_x, options.covariance_type, k
    )
    like = _like_statistics(summary, k, options.covariance_type, fit_device, fit_dtype)
    initial = None
    if weights0 is None or means0 is None or prec_chol0 is None:
        initial = _initial_parameters(reader, summary, coll, options, generator, like)
    weights, means, cov, prec_chol, failed = _starting_parameters(
        initial, weights0, means0, prec_chol0, summary.shift, options.covariance_type
    )
    _raise_if_failed(failed)

    e_step = _statistics_function(options.compile)
    # A tensor shard is one chunk in memory: its features are made once, as in memory.
    cached = (
        [(_features(c, summary, options.covariance_type), w) for _, c, w in reader] if isinstance(x, Tensor) else None
    )

    def statistics(coefficients: Tensor, constant: Tensor) -> _Statistics:
        error, stats = None, None
        try:
            if cached is not None:
                for features, w in cached:
                    stats = _add_statistics(stats, e_step(features, w, coefficients, constant))
            for _, chunk, w in reader if cached is None else ():
                features = _features(chunk, summary, options.covariance_type)
                stats = _add_statistics(stats, e_step(features, w, coefficients, constant))
                chunk = w = features = None  # freed before the next chunk is read
        except (ValueError, TypeError) as exc:
            if not coll.active:
                raise
            error, stats = exc, None
        return _reduced(coll, stats, like, error)

    fit = _run_em(statistics, summary.total, (weights, means, cov, prec_chol), failed, options)
    return fit._replace(means=fit.means + summary.shift), summary.batched


def stepwise_step_size(step: int, exponent: float = 0.6, offset: float = 2.0) -> float:
    """The step size of stepwise EM after ``step`` >= 1 chunks: ``(step + offset) ** -exponent``.

    Cappe and Moulines (2009) need ``sum_t gamma_t = inf`` and ``sum_t gamma_t^2 < inf``, i.e.
    ``0.5 < exponent <= 1``; ``exponent = 1, offset = 0`` averages the chunks' statistics
    equally (with the first chunk's at full weight), smaller exponents forget the early,
    badly estimated chunks faster.

    Example:
        >>> round(stepwise_step_size(1), 4), round(stepwise_step_size(100), 4)
        (0.5173, 0.0624)
    """
    return (step + offset) ** -exponent


@torch.no_grad()
def fit_gaussian_mixture_stepwise(
    x: Any,
    n_components: int,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    init_params: str = "kmeans",
    step_exponent: float = 0.6,
    step_offset: float = 2.0,
    generator: Any = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> GaussianMixtureFit:
    """Stepwise (online, mini-batch) EM over chunks seen once (Cappe and Moulines, 2009).

    For data too large to pass over many times: the first chunk initialises the mixture
    (``init_params`` on it, as :func:`~torchgmm.mixture.fit_gaussian_mixture` would) and its
    normalised statistics ``s_0``; each next chunk t gives its E-step statistics under the
    current parameters, divided by its total weight, ``s_bar_t``, and

        s_t = (1 - gamma_t) s_{t-1} + gamma_t s_bar_t,    theta_t = M-step(s_t)

    with ``gamma_t = (t + step_offset) ** -step_exponent`` (:func:`stepwise_step_size`). The
    statistics are those of the batch EM (:func:`torchgmm.mixture._e_step_statistics`), so on
    well-separated data the result approaches the batch fit as the chunks accumulate; each
    chunk is read once, so N need not be known. The data are centred on the first chunk's
    weighted mean. A one-shot iterator is fine here.

    Args:
        x: chunks as in :func:`~torchgmm.mixture.fit_gaussian_mixture` (``(N_i, D)`` or
            ``(B, N_i, D)`` tensors, or ``(x, sample_weight)`` pairs), an iterable or a
            zero-argument callable returning an iterator.
        n_components, covariance_type, reg_covar, init_params, generator, device, dtype: as
            in :func:`~torchgmm.mixture.fit_gaussian_mixture`.
        step_exponent: kappa in (0.5, 1].
        step_offset: t0 >= 0.

    Returns:
        :class:`~torchgmm.mixture.GaussianMixtureFit`: ``lower_bounds`` (B, T) holds each
        chunk's mean log-likelihood under the parameters it was given (T chunks),
        ``lower_bound`` the last, ``n_iter`` the number of steps (T - 1), ``converged``
        True (stepwise EM has no stopping test: it runs through the data).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> data = lambda: (torch.cat([torch.randn(100, 1, generator=g) - 5,
        ...                            torch.randn(100, 1, generator=g) + 5]) for _ in range(20))
        >>> fit = fit_gaussian_mixture_stepwise(data, 2, init_params="range")
        >>> fit.means.squeeze().round()
        tensor([-5.,  5.])
    """
    from torchgmm._checks import check_choice, check_positive_int, check_real
    from torchgmm.mixture import (
        COVARIANCE_TYPES,
        INIT_METHODS,
        _initial_resp,
        _log_prob_coefficients,
        precisions_cholesky_from_covariances,
    )

    check_positive_int(n_components, "n_components")
    check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    check_choice(init_params, "init_params", INIT_METHODS)
    reg_covar = check_real(reg_covar, "reg_covar", minimum=0)
    step_exponent = check_real(step_exponent, "step_exponent", minimum=0)
    if not 0.5 < step_exponent <= 1:
        raise ValueError(f"`step_exponent` must be in (0.5, 1] (Cappe and Moulines), got {step_exponent}.")
    step_offset = check_real(step_offset, "step_offset", minimum=0)
    reader = _ChunkReader(x if callable(x) else _Once(x), None if device is None else torch.device(device), dtype)
    k, stats, shift, bounds = n_components, None, None, []
    weights = means = prec_chol = None
    step = 0
    for index, chunk, w in reader:
        if not bool(torch.isfinite(chunk).all()):
            raise ValueError(f"chunk {index} of `x` holds NaN or inf; fitting needs finite values.")
        size = chunk.new_full((chunk.shape[0],), chunk.shape[1]) if w is None else w.sum(1)
        if shift is None:  # the first chunk: centre, initialise
            if chunk.shape[1] < k:
                raise ValueError(f"the first chunk has {chunk.shape[1]} samples, fewer than n_components={k}.")
            shift = (chunk.mean(1) if w is None else (w.unsqueeze(-1) * chunk).sum(1) / size.unsqueeze(-1)).unsqueeze(1)
            centred = chunk - shift
            features = _quadratic_features(centred, covariance_type)
            generators = _checked_generators(generator, chunk.shape[0], chunk.device)
            resp = _initial_resp(centred, w, k, init_params, generators)
            first = _resp_statistics(features, resp, w)
            stats = _Statistics(first.nk / size[:, None], first.moments / size[:, None, None], first.log_likelihood)
        else:
            features = _quadratic_features(chunk - shift, covariance_type)
            coefficients, constant = _log_prob_coefficients(means, prec_chol, covariance_type)
            part = _e_step_statistics(features, w, coefficients, constant + weights.log())
            bounds.append(part.log_likelihood / size)
            step += 1
            gamma = stepwise_step_size(step, step_exponent, step_offset)
            normalised = (part.nk / size[:, None], part.moments / size[:, None, None], part.log_likelihood / size)
            stats = _Statistics(*((1 - gamma) * s + gamma * p for s, p in zip(stats, normalised)))
        weights, means, cov = _params_from_statistics(stats, covariance_type, reg_covar, chunk.shape[-1])
        prec_chol, failed = precisions_cholesky_from_covariances(cov, covariance_type)
        _raise_if_failed(failed)
    if shift is None:
        raise ValueError("`x` yielded no chunks: stepwise EM needs at least one (N_i, D) chunk.")
    b = means.shape[0]
    lower_bounds = torch.stack(bounds, 1) if bounds else means.new_zeros(b, 0)
    lower_bound = lower_bounds[:, -1] if bounds else means.new_full((b,), float("nan"))
    return GaussianMixtureFit(
        weights,
        means + shift,
        cov,
        prec_chol,
        lower_bound,
        torch.full((b,), step, dtype=torch.long, device=means.device),
        torch.ones(b, dtype=torch.bool, device=means.device),
        lower_bounds,
    )


class _Once:
    """An iterable read once (stepwise EM reads each chunk once): a one-shot iterator passes."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __call__(self) -> Iterator[Any]:
        return iter(self.source)
