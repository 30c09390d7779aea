"""Distributed EM over 2 gloo processes equals the one-process fit of the concatenated shards.

One spawn of two ranks (``torch.multiprocessing``, a ``file://`` rendezvous in tmp_path)
runs every case; each rank saves its results, and the tests compare them with in-memory
fits of the whole data made here, and with each other.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchgmm.mixture import COVARIANCE_TYPES, GaussianMixture, fit_gaussian_mixture

FIELDS = ("weights", "means", "covariances", "precisions_cholesky", "lower_bound")
WORLD = 2
SPLIT = 700  # rank 0 holds the first 700 samples, rank 1 the other 800: uneven shards


def _data(b: int | None = None, dtype=torch.float64, weighted: bool = False):
    g = torch.Generator().manual_seed(0)
    shape = (1500, 2) if b is None else (b, 1500, 2)
    centres = torch.tensor([[4.0, 4.0], [-3.0, -3.0], [0.0, 6.0]], dtype=torch.float64)
    labels = torch.randint(0, 3, shape[:-1], generator=g)
    x = centres[labels] + torch.randn(shape, generator=g, dtype=torch.float64) * (1 + 0.5 * labels.unsqueeze(-1))
    w = torch.rand(shape[:-1], generator=g, dtype=torch.float64) + 0.1 if weighted else None
    return (x + 50).to(dtype), None if w is None else w.to(dtype)


def _cases() -> dict:
    """name -> (fit options, b, dtype, weighted, as_chunks)"""
    cases = {}
    for ct in COVARIANCE_TYPES:
        for weighted in (False, True):
            cases[f"{ct}-w{int(weighted)}"] = (
                dict(covariance_type=ct, init_params="range", tol=0, max_iter=15),
                None,
                torch.float64,
                weighted,
                weighted,
            )
    # the stopping test: tol > 0, problems stopping at different iterations in the batch
    cases["kmeans"] = (dict(init_params="kmeans", tol=1e-6, max_iter=40), None, torch.float64, False, True)
    cases["kmeans++-weighted"] = (dict(init_params="kmeans++", tol=0, max_iter=15), None, torch.float64, True, False)
    cases["batched"] = (
        dict(covariance_type="diag", init_params="range", tol=1e-6, max_iter=40),
        3,
        torch.float64,
        True,
        True,
    )
    cases["float32"] = (dict(init_params="range", tol=0, max_iter=15), None, torch.float32, False, False)
    return cases


def _shard(x, w, rank, as_chunks):
    part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    xs = x[..., part, :]
    ws = None if w is None else w[..., part]
    if not as_chunks:
        return xs, ws
    size = 300
    n = xs.shape[-2]
    chunks = [
        xs[..., i : i + size, :] if ws is None else (xs[..., i : i + size, :], ws[..., i : i + size])
        for i in range(0, n, size)
    ]
    return chunks, None


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    group = dist.group.WORLD
    results: dict = {}
    for name, (options, b, dtype, weighted, as_chunks) in _cases().items():
        x, w = _data(b, dtype, weighted)
        xs, ws = _shard(x, w, rank, as_chunks)
        fit = fit_gaussian_mixture(
            xs, 3, sample_weight=ws, process_group=group, generator=torch.Generator().manual_seed(3), **options
        )
        results[name] = fit._asdict()
    # the module, on the default group
    x, _ = _data()
    xs, _ = _shard(x, None, rank, False)
    gm = GaussianMixture(3, init_params="range", tol=1e-4, distributed=True).fit(xs)
    results["module"] = {"means": gm.means_, "n_iter": gm.n_iter_}

    def error_of(call):
        try:
            call()
        except (ValueError, TypeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    # rank 1 has no data
    results["no-data"] = error_of(lambda: fit_gaussian_mixture([xs] if rank == 0 else [], 3, process_group=group))
    # NaN in rank 1's third chunk
    chunks = [xs[i : i + 200].clone() for i in range(0, len(xs), 200)]
    if rank == 1:
        chunks[2][5, 0] = float("nan")
    results["nan"] = error_of(lambda: fit_gaussian_mixture(chunks, 3, process_group=group))
    # rank 1's chunks have another D
    other = xs if rank == 0 else torch.cat([xs, xs[:, :1]], 1)
    results["other-d"] = error_of(lambda: fit_gaussian_mixture(other, 3, process_group=group))
    # and the group still works after the errors: a last good fit
    results["after-errors"] = fit_gaussian_mixture(xs, 3, init_params="range", process_group=group)._asdict()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("dist")
    init_file = str(tmp / "rendezvous")
    sys.path.insert(0, os.path.dirname(__file__))  # the spawned ranks import this module
    try:
        mp.spawn(_worker, args=(init_file, str(tmp)), nprocs=WORLD, join=True)
    finally:
        sys.path.remove(os.path.dirname(__file__))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(name: str):
    options, b, dtype, weighted, _ = _cases()[name]
    x, w = _data(b, dtype, weighted)
    return fit_gaussian_mixture(x, 3, sample_weight=w, generator=torch.Generator().manual_seed(3), **options)


@pytest.mark.parametrize("name", list(_cases()))
def test_every_rank_equals_the_one_process_fit(ranks, name):
    want = _reference(name)
    rtol = 1e-10 if want.means.dtype == torch.float64 else 1e-5
    for rank, results in enumerate(ranks):
        got = results[name]
        for field in FIELDS:
            err = float((got[field] - getattr(want, field)).abs().max() / getattr(want, field).abs().max())
            assert err <= rtol, f"rank {rank}, {field}: relative error {err:.3g}"
        assert torch.equal(got["n_iter"], want.n_iter)
    # the ranks hold bit-identical parameters
    for field in FIELDS:
        assert torch.equal(ranks[0][name][field], ranks[1][name][field]), field


def test_module_on_the_default_group(ranks):
    x, _ = _data()
    want = GaussianMixture(3, init_params="range", tol=1e-4).fit(x)
    for results in ranks:
        torch.testing.assert_close(results["module"]["means"], want.means_, rtol=1e-10, atol=0)
        assert int(results["module"]["n_iter"]) == int(want.n_iter_)


def test_errors_are_raised_on_every_rank(ranks):
    for results in ranks:
        assert "no data on rank(s) [1]" in results["no-data"]
        assert "disagree in layout" in results["other-d"]
    assert "chunk 2 of `x` holds NaN or inf" in ranks[1]["nan"]
    assert "failed on rank(s) [1]" in ranks[0]["nan"]
    want = fit_gaussian_mixture(_data()[0], 3, init_params="range")
    torch.testing.assert_close(ranks[0]["after-errors"]["means"], want.means, rtol=1e-10, atol=0)
