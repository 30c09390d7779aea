"""VideoReader(backend="torchcodec") against the PyAV backend, on videos the tests write.

The comparisons skip cleanly where TorchCodec (or the FFmpeg libraries it loads) is missing;
the argument and install-hint checks run everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from _videos import write_video  # noqa: E402
from torchgmm.exceptions import VideoDecodeError  # noqa: E402
from torchgmm.io.video import VideoReader, video_backends  # noqa: E402

needs_torchcodec = pytest.mark.skipif(
    "torchcodec" not in video_backends(), reason="TorchCodec (or the FFmpeg libraries it needs) is not installed"
)


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(T, 3, H, W) uint8: smooth moving gradients plus noise (compresses like real video)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    t = torch.arange(n).view(n, 1, 1, 1)
    base = (xx * 3 + yy * 2)[None, None] + t * 7 + torch.tensor([0, 60, 120]).view(1, 3, 1, 1)
    return (base % 256 + torch.randint(-8, 9, (n, 3, h, w), generator=g)).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """Lossless (FFV1, RGB) 30-frame clip of odd size 33x17 (W x H) at 25 frames/s."""
    frames = _frames(30, 17, 33)
    return write_video(tmp_path_factory.mktemp("tc") / "lossless.mkv", frames), frames


def _read(path: Path, backend: str, **options) -> torch.Tensor:
    with VideoReader(path, backend=backend, batch_size=1000, **options) as reader:
        return torch.cat(list(reader))


def _write_yuv(path: Path, frames: torch.Tensor, rotation: int = 0) -> Path:
    """(T, 3, H, W) -> lossless FFV1 yuv420p (.mkv) or H.264 RGB (.mp4, with a display rotation)."""
    if path.suffix == ".mkv":
        return write_video(path, frames, "ffv1", pix_fmt="yuv420p", rotation=rotation)
    return write_video(path, frames, "libx264rgb", options={"g": "5"}, rotation=rotation)


class TestBackendChoice:
    def test_video_backends(self):
        backends = video_backends()
        assert isinstance(backends, tuple) and backends[0] == "pyav"
        assert set(backends) <= {"pyav", "torchcodec"} and len(set(backends)) == len(backends)

    def test_default_is_pyav(self, clip):
        with VideoReader(clip[0]) as reader:
            assert reader.backend == "pyav" and "backend='pyav'" in repr(reader)

    def test_unknown_backend_names_the_argument_and_the_choices(self, clip):
        with pytest.raises(ValueError, match=r"`backend` must be one of 'pyav', 'torchcodec', got 'opencv'"):
            VideoReader(clip[0], backend="opencv")
        with pytest.raises(
            ValueError, match=r"`names` must be backend names among 'pyav', 'torchcodec', got \['opencv'\]"
        ):
            video_backends(["opencv"])
        with pytest.raises(ValueError, match=r"`names` must be .*got 'pyav'"):  # a string is not a list of names
            video_backends("pyav")

    def test_missing_torchcodec_says_how_to_install_it(self, clip, monkeypatch):
        for name in ("torchcodec", "torchcodec.decoders", "torchcodec.transforms"):
            monkeypatch.setitem(sys.modules, name, None)  # `import torchcodec` now fails
        with pytest.raises(ImportError, match=r"backend='torchcodec'.*pip install \"torchmog\[torchcodec\]\""):
            VideoReader(clip[0], backend="torchcodec")
        assert video_backends() == ("pyav",)
        with VideoReader(clip[0]) as reader:  # the default backend does not need it
            assert torch.equal(torch.stack(list(reader)), clip[1])

    def test_torchcodec_without_ffmpeg_is_not_offered(self, clip, monkeypatch):
        # TorchCodec >= 0.17 imports without FFmpeg's libraries (for its image decoders) and
        # fails at the first video decode: the backend is refused up front, saying why
        import types

        ops = types.ModuleType("torchcodec._core.ops")
        ops._FFMPEG_AVAILABLE = False
        monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
        monkeypatch.setitem(sys.modules, "torchcodec.decoders", types.ModuleType("torchcodec.decoders"))
        monkeypatch.setitem(sys.modules, "torchcodec._core", types.ModuleType("torchcodec._core"))
        monkeypatch.setitem(sys.modules, "torchcodec._core.ops", ops)
        with pytest.raises(ImportError, match=r"backend='torchcodec'.*none of the FFmpeg shared libraries"):
            VideoReader(clip[0], backend="torchcodec")
        assert video_backends() == ("pyav",)
        ops._FFMPEG_AVAILABLE = True  # with them, the same modules are taken as usable
        assert video_backends(["torchcodec"]) == ("torchcodec",)

    def test_skipping_damage_needs_pyav(self, clip):
        with pytest.raises(ValueError, match=r"on_damage='skip'.*backend='pyav'"):
            VideoReader(clip[0], backend="torchcodec", on_damage="skip")


@needs_torchcodec
class TestTorchCodecBackend:
    @pytest.mark.parametrize("batch_size,prefetch,threads", [(None, 2, True), (7, 0, False), (8, 3, True)])
    def test_rgb_equals_pyav_bit_for_bit(self, clip, batch_size, prefetch, threads):
        path, ref = clip
        items = {}
        for backend in ("pyav", "torchcodec"):
            with VideoReader(path, backend=backend, batch_size=batch_size, prefetch=prefetch, threads=threads) as r:
                items[backend] = list(r)
        assert [tuple(x.shape) for x in items["torchcodec"]] == [tuple(x.shape) for x in items["pyav"]]
        assert all(x.dtype == torch.uint8 and x.is_contiguous() for x in items["torchcodec"])
        stack = torch.stack if batch_size is None else torch.cat
        assert torch.equal(stack(items["torchcodec"]), stack(items["pyav"]))
        assert torch.equal(stack(items["torchcodec"]), ref)

    def test_rawvideo_equals_pyav(self, tmp_path):
        path = write_video(tmp_path / "raw.nut", _frames(6, 20, 30, seed=1), codec="rawvideo")
        assert torch.equal(_read(path, "torchcodec"), _read(path, "pyav"))

    def test_metadata_equals_pyav(self, clip):
        path, _ = clip
        with (
            VideoReader(path, start=0.2, end=19, step=3, size=(8, 16)) as a,
            VideoReader(path, start=0.2, end=19, step=3, size=(8, 16), backend="torchcodec") as b,
        ):
            for name in (
                "fps",
                "frame_count",
                "frame_count_exact",
                "duration",
                "height",
                "width",
                "shape",
                "source_size",
                "rotation",
                "start_index",
                "end_index",
                "indices",
            ):
                assert getattr(b, name) == getattr(a, name), name
            assert len(b) == len(a) and b.backend == "torchcodec"

    @pytest.mark.parametrize(
        "options",
        [
            dict(start=3, end=20, step=4),
            dict(start=0.2, end=0.6),
            dict(start=29),
            dict(end=1),
            dict(step=7),
            dict(start=5, end=100),
            dict(start=40),
        ],
    )
    @pytest.mark.parametrize("batch_size", [None, 3])
    def test_selection_equals_pyav(self, clip, options, batch_size):
        path, ref = clip
        got = {}
        for backend in ("pyav", "torchcodec"):
            with VideoReader(path, backend=backend, batch_size=batch_size, **options) as reader:
                indices = list(reader.indices)
                items = list(reader)
            got[backend] = (
                torch.stack(items)
                if batch_size is None and items
                else (torch.cat(items) if items else torch.empty(0, *ref.shape[1:], dtype=torch.uint8))
            )
            assert torch.equal(got[backend], ref[indices]), backend
        assert torch.equal(got["torchcodec"], got["pyav"])

    def test_gray_within_one_level_of_pyav(self, clip):
        # BT.601 luma of the RGB frames (pixels.to_grey_uint8) against swscale's RGB -> grey
        path, ref = clip
        a, b = _read(path, "pyav", gray=True), _read(path, "torchcodec", gray=True)
        assert b.shape == a.shape == (30, 1, 17, 33)
        from torchgmm.pixels import to_grey_uint8

        assert torch.equal(b, to_grey_uint8(ref))
        assert (a.int() - b.int()).abs().max() <= 1

    @pytest.mark.parametrize("size", [(8, 16), (9, 11), (40, 50), (17, 20), (34, 66)])
    def test_resize_is_torch_antialiased_bilinear_within_the_bound_of_pyav(self, clip, size):
        # TorchCodec's frames are resized as image folders are (_resize: torch's antialiased
        # bilinear); PyAV's by swscale's bilinear filter: at most a level apart when enlarging,
        # up to about 30 levels at sharp edges when shrinking (the two filters' footprints differ)
        from torchgmm.io.video import _resize
        from torchgmm.pixels import to_grey_uint8

        path, ref = clip
        got = _read(path, "torchcodec", size=size)
        assert got.shape == (30, 3, *size) and torch.equal(got, _resize(ref, size))
        grey = _read(path, "torchcodec", size=size, gray=True)
        assert torch.equal(grey, _resize(to_grey_uint8(ref), size))  # grey first, as image folders
        for ours, theirs in ((got, _read(path, "pyav", size=size)), (grey, _read(path, "pyav", size=size, gray=True))):
            diff = (ours.float() - theirs.float()).abs()
            enlarging = size[0] >= ref.shape[-2] and size[1] >= ref.shape[-1]
            assert diff.max() <= (1 if enlarging else 40) and diff.mean() <= 2.5

    def test_yuv_video_within_a_few_levels(self, tmp_path):
        path = _write_yuv(tmp_path / "yuv.mkv", _frames(8, 36, 50, seed=2))
        a, b = _read(path, "pyav"), _read(path, "torchcodec")
        assert (a.int() - b.int()).abs().max() <= 3
        a, b = _read(path, "pyav", gray=True), _read(path, "torchcodec", gray=True)
        assert (a.float() - b.float()).abs().mean() <= 1.5

    @pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("mpeg4", ".avi")])
    def test_lossy_codecs_with_reordered_frames_select_the_same_frames(self, tmp_path, codec, suffix):
        # H.264 with B-frames (decode order differs from display order) and MPEG-4 part 2
        path = tmp_path / f"lossy{suffix}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 64, 48, "yuv420p", 2_000_000
            for f in _frames(40, 48, 64, seed=7).permute(0, 2, 3, 1).numpy():
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        for options in (dict(), dict(start=7, end=33, step=5), dict(start=0.5)):
            a, b = _read(path, "pyav", **options), _read(path, "torchcodec", **options)
            assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 3, options

    @pytest.mark.parametrize("rotation", [90, 270])
    def test_rotated_video_is_turned_as_pyav_turns_it(self, tmp_path, rotation):
        path = _write_yuv(tmp_path / "phone.mp4", _frames(6, 24, 40, seed=3), rotation)
        with VideoReader(path, backend="torchcodec", batch_size=10) as reader:
            assert reader.rotation == rotation and reader.shape == (3, 40, 24)
            (got,) = list(reader)
        assert torch.equal(got, _read(path, "pyav"))
        small = _read(path, "torchcodec", size=(20, 16))
        assert small.shape == (6, 3, 20, 16)
        assert (small.float() - _read(path, "pyav", size=(20, 16)).float()).abs().mean() <= 2.5

    def test_image_folder_is_read_by_the_image_decoder(self, tmp_path):
        from torchgmm.io.images import write_png

        frames = _frames(4, 12, 10, seed=4)
        for i, frame in enumerate(frames):
            write_png(tmp_path / f"in{i + 1:06d}.png", frame)
        with VideoReader(tmp_path, backend="torchcodec", batch_size=10, size=(6, 5)) as reader:
            assert reader.backend == "torchcodec" and reader.frame_count == 4
            (got,) = list(reader)
        assert torch.equal(got, _read(tmp_path, "pyav", size=(6, 5)))

    def test_truncated_file_yields_then_raises_as_pyav(self, tmp_path):
        path = write_video(tmp_path / "full.mkv", _frames(30, 48, 64, seed=5))
        cut = tmp_path / "cut.mkv"
        cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
        got, index = {}, {}
        for backend in ("pyav", "torchcodec"):
            got[backend] = []
            with VideoReader(cut, backend=backend, batch_size=4) as reader:
                with pytest.raises(VideoDecodeError, match=r"cut\.mkv.*truncated") as info:
                    for b in reader:
                        got[backend].append(b)
            index[backend] = info.value.frame_index
        assert index["torchcodec"] == index["pyav"] == sum(b.shape[0] for b in got["pyav"]) > 0
        assert torch.equal(torch.cat(got["torchcodec"]), torch.cat(got["pyav"]))

    def test_corrupt_middle_yields_then_raises_as_pyav(self, tmp_path):
        path = write_video(tmp_path / "corrupt.mkv", _frames(30, 48, 64, seed=6))
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 2000] = b"\xff" * 2000
        path.write_bytes(bytes(data))
        got, index = {}, {}
        for backend in ("pyav", "torchcodec"):
            got[backend] = []
            with VideoReader(path, backend=backend, batch_size=4) as reader:
                with pytest.raises(VideoDecodeError, match=r"corrupt\.mkv.* frame \d+") as info:
                    for b in reader:
                        got[backend].append(b)
            index[backend] = info.value.frame_index
        assert index["torchcodec"] == index["pyav"] == sum(b.shape[0] for b in got["pyav"]) > 0
        assert torch.equal(torch.cat(got["torchcodec"]), torch.cat(got["pyav"]))

    def test_not_a_video_and_single_image_are_refused(self, tmp_path):
        bad = tmp_path / "notes.mp4"
        bad.write_bytes(b"hello, this is not a video at all\n" * 50)
        with pytest.raises(VideoDecodeError, match=r"notes\.mp4"):
            VideoReader(bad, backend="torchcodec")
        from torchgmm.io.images import write_png

        write_png(tmp_path / "still.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"still\.png.*single image"):
            VideoReader(tmp_path / "still.png", backend="torchcodec")

    def test_close_and_abandoned_iteration_release_the_decoder(self, clip):
        path, ref = clip
        reader = VideoReader(path, backend="torchcodec", prefetch=1)
        first = next(iter(reader))
        assert torch.equal(first, ref[0])
        reader.close()
        assert reader._decoder is None and reader._thread is None
        with VideoReader(path, backend="torchcodec") as reader:
            for _ in reader:
                break
        assert reader._decoder is None
        with pytest.raises(ValueError, match="closed"):
            list(reader)

    @pytest.mark.parametrize("prefetch", [0, 2])
    def test_frames_are_ordinary_tensors_under_inference_mode(self, clip, prefetch, device):
        path, ref = clip
        with (
            torch.inference_mode(),
            VideoReader(path, backend="torchcodec", batch_size=7, prefetch=prefetch, device=device) as reader,
        ):
            batches = list(reader)
        assert not any(b.is_inference() for b in batches)
        assert all(b.device.type == torch.device(device).type for b in batches)
        assert torch.equal(torch.cat(batches).cpu(), ref)


@needs_torchcodec
def test_bench_video_times_both_backends_side_by_side(tmp_path):
    import json
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_video.py"
    out = tmp_path / "video.json"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--video",
            "none",
            "--model",
            "none",
            "--sizes",
            "64x48",
            "--gen-frames",
            "12",
            "--frames",
            "12",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--backend",
            "both",
            "--repeats",
            "2",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pyav f/s" in done.stdout and "torchcodec f/s" in done.stdout
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert result["backends"] == ["pyav", "torchcodec"] and "torchcodec" in result["versions"]
    for backend in ("pyav", "torchcodec"):
        runs = row["decode_by_backend"][backend]["runs"]
        assert len(runs) == 2 and all(fps > 0 for fps in runs)
    assert row["frames"] == 12 and row["decode_fps"] == row["decode_by_backend"]["pyav"]["median"]
