"""VideoReader / VideoWriter on videos and image folders the tests generate themselves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from torchgmm._checks import ShapeError  # noqa: E402
from torchgmm.io.video import (  # noqa: E402
    VideoDecodeError,
    VideoReader,
    VideoWriter,
    list_image_sequence,
    parse_position,
    parse_size,
)


def _frames(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """(T, H, W, C) uint8: smooth moving gradients plus noise (compresses like real video)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, c), np.uint8)
    for t in range(n):
        for ch in range(c):
            base = (xx * 3 + yy * 2 + t * 7 + ch * 60) % 256
            out[t, :, :, ch] = np.clip(base + rng.integers(-8, 9, (h, w)), 0, 255)
    return out


def _write_av(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = 25, **options) -> None:
    """Reference writer using PyAV directly (independent of VideoWriter)."""
    n, h, w, c = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.bit_rate = 4_000_000  # lossy codecs: keep the error small and predictable
        if options:
            stream.options = {k: str(v) for k, v in options.items()}
        for a in frames:
            f = av.VideoFrame.from_ndarray(a[..., 0] if c == 1 else a, format="gray" if c == 1 else "rgb24")
            for p in stream.encode(f):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)


def _chw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def ffv1_video(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """Lossless 30-frame RGB clip of odd size 33x17 (W x H)."""
    frames = _frames(30, 17, 33)
    path = tmp_path_factory.mktemp("vid") / "lossless.mkv"
    _write_av(path, frames, "ffv1", "bgr0")
    return path, _chw(frames)


class TestVideoReader:
    def test_lossless_pixels_and_metadata(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path) as reader:
            assert reader.fps == pytest.approx(25)
            assert (reader.height, reader.width, reader.channels) == (17, 33, 3)
            assert abs(reader.frame_count - 30) <= 1
            assert reader.duration == pytest.approx(reader.frame_count / 25)
            frames = list(reader)
        assert len(frames) == 30
        assert frames[0].shape == (3, 17, 33) and frames[0].dtype == torch.uint8
        assert torch.equal(torch.stack(frames), ref)

    def test_batches(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path, batch_size=8) as reader:
            batches = list(reader)
        assert [b.shape[0] for b in batches] == [8, 8, 8, 6]
        assert all(b.is_contiguous() for b in batches)
        assert torch.equal(torch.cat(batches), ref)

    @pytest.mark.parametrize("prefetch", [0, 1, 3])
    def test_prefetch_and_threads(self, ffv1_video, prefetch):
        path, ref = ffv1_video
        with VideoReader(path, batch_size=7, prefetch=prefetch, threads=False) as reader:
            assert torch.equal(torch.cat(list(reader)), ref)

    @pytest.mark.parametrize("prefetch", [0, 2])
    def test_frames_are_ordinary_tensors_under_inference_mode(self, ffv1_video, prefetch, device):
        # A compiled model fed inference tensors after ordinary ones compiles again (dispatch
        # keys differ): the reader yields ordinary tensors whatever the consumer's mode.
        path, ref = ffv1_video
        with torch.inference_mode(), VideoReader(path, batch_size=7, prefetch=prefetch, device=device) as reader:
            batches = list(reader)
        assert not any(b.is_inference() for b in batches)
        assert torch.equal(torch.cat(batches).cpu(), ref)

    def test_step_start_end_indices(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path, start=3, end=20, step=4) as reader:
            assert list(reader.indices) == [3, 7, 11, 15, 19]
            got = torch.stack(list(reader))
        assert torch.equal(got, ref[3:20:4])

    def test_start_end_seconds(self, ffv1_video):
        path, ref = ffv1_video
        # 25 fps: 0.2 s -> frame 5, 0.6 s -> frame 15 (exclusive)
        with VideoReader(path, start=0.2, end=0.6, batch_size=100) as reader:
            (got,) = list(reader)
        assert torch.equal(got, ref[5:15])

    def test_resolved_selection(self, ffv1_video):
        path, _ = ffv1_video
        with VideoReader(path, start=0.2, end=19, step=3, size=(8, 16)) as reader:
            assert (reader.start_index, reader.end_index, reader.step) == (5, 19, 3)
            assert reader.source_size == (17, 33) and (reader.height, reader.width) == (8, 16)
        with VideoReader(path) as reader:
            assert (reader.start_index, reader.end_index) == (0, None)

    def test_command_line_positions_read_the_same_frames(self, ffv1_video):
        # "5" is a frame index, "0.6s" a time: the reader converts them as its int/float arguments
        path, ref = ffv1_video
        with VideoReader(path, start=parse_position("5"), end=parse_position("0.6s"), batch_size=100) as reader:
            (got,) = list(reader)
        assert torch.equal(got, ref[5:15])

    def test_gray(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path, gray=True, batch_size=30) as reader:
            (got,) = list(reader)
        assert got.shape == (30, 1, 17, 33)
        # BT.601 luma of the RGB reference (swscale: limited-range Y expanded to full range)
        luma = (ref.double() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        assert (got.double() - luma).abs().max() <= 3

    def test_resize(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path, size=(8, 16), batch_size=30) as reader:
            (got,) = list(reader)
        assert got.shape == (30, 3, 8, 16)
        small = torch.nn.functional.interpolate(ref.float(), size=(8, 16), mode="area")
        assert (got.float() - small).abs().mean() < 12

    @pytest.mark.parametrize(
        "codec,pix_fmt,suffix,h,w,tol",
        [
            ("mpeg4", "yuv420p", ".avi", 48, 64, 8.0),
            ("libx264", "yuv420p", ".mp4", 48, 64, 8.0),
            ("libx264", "yuv444p", ".mkv", 17, 33, 6.0),
            ("ffv1", "yuv444p", ".mkv", 17, 33, 3.0),
            ("ffv1", "gray", ".mkv", 17, 33, 0.0),
        ],
    )
    def test_codecs_within_tolerance(self, tmp_path, codec, pix_fmt, suffix, h, w, tol):
        c = 1 if pix_fmt == "gray" else 3
        frames = _frames(12, h, w, c=c, seed=1)
        path = tmp_path / f"clip{suffix}"
        _write_av(path, frames, codec, pix_fmt)
        with VideoReader(path, gray=(c == 1), batch_size=12) as reader:
            (got,) = list(reader)
        ref = _chw(frames)
        assert got.shape == ref.shape
        err = (got.float() - ref.float()).abs().mean().item()
        assert err <= tol, f"{codec}/{pix_fmt}: mean abs error {err}"

    @pytest.mark.parametrize("w", [48, 50, 52, 56, 58, 63])
    def test_yuv420p_any_width_equals_pyav_rgb(self, tmp_path, w):
        # Frames equal PyAV's own RGB conversion of the same stream at every width (swscale's
        # planar conversion once corrupted the last columns when W mod 16 was 2..8).
        frames = _frames(4, 36, w, seed=2)
        path = tmp_path / "clip.mkv"
        _write_av(path, frames, "ffv1", "yuv420p")
        with VideoReader(path, batch_size=4) as reader:
            (got,) = list(reader)
        with av.open(str(path)) as container:
            ref = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]
        assert torch.equal(got, torch.stack(ref))

    def test_image_folder(self, tmp_path):
        from torchvision.io import encode_png

        frames = _chw(_frames(12, 10, 14, seed=2))
        folder = tmp_path / "input"
        folder.mkdir()
        # unpadded numbers: natural sort must put in2 before in10
        for i, f in enumerate(frames, start=1):
            (folder / f"in{i}.png").write_bytes(encode_png(f).numpy().tobytes())
        (folder / "notes.txt").write_text("ignored")
        assert [p.name for p in list_image_sequence(folder)][:3] == ["in1.png", "in2.png", "in3.png"]
        with VideoReader(folder, fps=10, start=2, step=3, batch_size=2) as reader:
            assert reader.fps == 10 and reader.frame_count == 12
            got = torch.cat(list(reader))
        assert torch.equal(got, frames[2::3])
        with VideoReader(folder, gray=True) as reader:
            first = next(iter(reader))
        assert first.shape == (1, 10, 14)

    def test_image_folder_numbering_gap_warns(self, tmp_path):
        from torchvision.io import encode_png

        frames = _chw(_frames(3, 4, 4, seed=5))
        for number, f in zip((1, 2, 4), frames):
            (tmp_path / f"in{number:06d}.png").write_bytes(encode_png(f).numpy().tobytes())
        with pytest.warns(UserWarning, match=r"jumps from frame number 2 to 4 \(in000004.png\)"):
            reader = VideoReader(tmp_path)
        with reader:
            assert torch.equal(torch.stack(list(reader)), frames)  # read in order all the same

    def test_image_folder_16_bit_png(self, tmp_path):
        # 16-bit frames are read as their high byte (uint8), as 8-bit frames of the same scene
        from PIL import Image

        values = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
        for i in range(2):
            Image.fromarray(values + i).save(tmp_path / f"in{i + 1:06d}.png")
        with VideoReader(tmp_path, batch_size=2) as reader:
            (got,) = list(reader)
        assert got.dtype == torch.uint8 and got.shape == (2, 3, 2, 4)
        expected = torch.from_numpy((values >> 8).astype(np.uint8))
        assert torch.equal(got[0, 0], expected) and torch.equal(got[0, 2], expected)
        with VideoReader(tmp_path, gray=True) as reader:
            assert torch.equal(next(iter(reader))[0], expected)

    def test_image_folder_jpeg_and_corrupt(self, tmp_path):
        from torchvision.io import encode_jpeg

        frames = _chw(_frames(4, 16, 16, seed=3))
        for i, f in enumerate(frames, start=1):
            (tmp_path / f"in{i:06d}.jpg").write_bytes(encode_jpeg(f, quality=95).numpy().tobytes())
        (tmp_path / "in000005.jpg").write_bytes(b"not a jpeg")
        got = []
        with VideoReader(tmp_path, batch_size=3) as reader:
            with pytest.raises(VideoDecodeError, match=r"frame 4 .*in000005\.jpg") as info:
                for b in reader:
                    got.append(b)
        got = torch.cat(got)
        assert len(got) == 4 and info.value.frame_index == 4
        assert (got.float() - frames.float()).abs().mean() < 6

    @pytest.mark.parametrize("suffix,codec,pix_fmt", [(".mkv", "ffv1", "bgr0"), (".avi", "mpeg4", "yuv420p")])
    def test_truncated_file_yields_then_raises(self, tmp_path, suffix, codec, pix_fmt):
        frames = _frames(30, 48, 64, seed=4)
        path = tmp_path / f"full{suffix}"
        _write_av(path, frames, codec, pix_fmt)
        data = path.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: int(len(data) * 0.6)])
        got = []
        with VideoReader(cut, batch_size=4) as reader:
            with pytest.raises(VideoDecodeError, match=r"cut" + suffix.replace(".", r"\.") + r".*frame \d+") as info:
                for b in reader:
                    got.append(b)
        n = sum(b.shape[0] for b in got)
        assert 0 < n < 30
        assert info.value.frame_index == n  # every frame before the damage was yielded
        assert info.value.path == str(cut)
        if codec == "ffv1":
            assert torch.equal(torch.cat(got), _chw(frames)[:n])

    def test_corrupt_middle_yields_then_raises(self, tmp_path):
        frames = _frames(30, 48, 64, seed=5)
        path = tmp_path / "corrupt.mkv"
        _write_av(path, frames, "ffv1", "bgr0")
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 2000] = b"\xff" * 2000
        path.write_bytes(bytes(data))
        got = []
        with VideoReader(path, batch_size=4) as reader:
            with pytest.raises(VideoDecodeError, match=r"corrupt\.mkv.* frame \d+") as info:
                for b in reader:
                    got.append(b)
        got = torch.cat(got)
        assert 0 < len(got) < 30 and info.value.frame_index == len(got)
        assert torch.equal(got, _chw(frames)[: len(got)])

    def test_truncated_mp4_fails_at_construction(self, tmp_path):
        path = tmp_path / "full.mp4"
        _write_av(path, _frames(10, 32, 32), "libx264", "yuv420p")
        cut = tmp_path / "cut.mp4"
        data = path.read_bytes()
        cut.write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
        with pytest.raises(VideoDecodeError, match=r"cut\.mp4"):
            VideoReader(cut)

    def test_not_a_video(self, tmp_path):
        bad = tmp_path / "notes.mp4"
        bad.write_bytes(b"hello, this is not a video at all\n" * 50)
        with pytest.raises(VideoDecodeError, match=r"notes\.mp4"):
            VideoReader(bad)

    def test_no_video_stream(self, tmp_path):
        path = tmp_path / "audio.wav"
        with av.open(str(path), "w") as c:
            s = c.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode():
                c.mux(p)
        with pytest.raises(ValueError, match=r"audio\.wav.*no video stream"):
            VideoReader(path)

    @pytest.mark.parametrize("name", ["still.png", "still.jpg", "png-named.mkv"])
    def test_single_image_is_not_a_video(self, tmp_path, name):
        """FFmpeg opens a still image as a one-frame video; the reader refuses it, naming the
        folder that would read as a sequence (also when the suffix hides the image)."""
        from PIL import Image

        path = tmp_path / name
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            path, format="PNG" if name.endswith(("png", "mkv")) else "JPEG"
        )
        with pytest.raises(ValueError, match=rf"{re.escape(name)}.*single image.*pass their folder"):
            VideoReader(path)

    def test_animated_png_is_a_video(self, tmp_path):
        from PIL import Image

        frames = [Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)) for i in range(4)]
        frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=100)
        with VideoReader(tmp_path / "anim.png") as reader:
            got = torch.stack(list(reader))
        assert got.shape == (4, 3, 8, 10) and got[:, :, 0, 0].tolist() == [[40 * i] * 3 for i in range(4)]

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"nope\.mkv"):
            VideoReader(tmp_path / "nope.mkv")

    def test_bad_arguments(self, ffv1_video):
        path, _ = ffv1_video
        with pytest.raises(ValueError, match="step"):
            VideoReader(path, step=0)
        with pytest.raises(TypeError, match="start"):
            VideoReader(path, start="3")
        with pytest.raises(ValueError, match="size"):
            VideoReader(path, size=(3,))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
    def test_cuda_unavailable(self, ffv1_video):
        with pytest.raises(ValueError, match="CUDA is not available"):
            VideoReader(ffv1_video[0], device="cuda")

    def test_close_stops_thread_early(self, ffv1_video):
        path, ref = ffv1_video
        before = threading.active_count()
        reader = VideoReader(path, prefetch=1)
        it = iter(reader)
        assert torch.equal(next(it), ref[0])
        reader.close()
        assert threading.active_count() == before
        with pytest.raises(ValueError, match="closed"):
            list(reader)
        with pytest.raises(ValueError, match="closed while it was being iterated"):
            list(it)  # the iterator started before close() ends with an error instead of waiting forever

    @pytest.mark.parametrize(
        "durations_ms", [[20] * 10 + [200] * 10, [200] * 10 + [20] * 10], ids=["slowing", "speeding"]
    )
    def test_variable_frame_rate_is_not_truncated(self, tmp_path, durations_ms):
        # Matroska has no frame count: the duration x rate estimate is wrong for variable frame
        # rate (101 or 12 frames for these 20), so it must not make a complete file "truncated"
        from fractions import Fraction

        path = tmp_path / "vfr.mkv"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("ffv1", rate=1000 // durations_ms[0])
            stream.width, stream.height, stream.pix_fmt = 16, 8, "bgr0"
            stream.time_base = Fraction(1, 1000)
            t = 0
            for i, d in enumerate(durations_ms):
                frame = av.VideoFrame.from_ndarray(np.full((8, 16, 3), 10 * i, np.uint8), format="rgb24")
                frame.pts, frame.time_base, t = t, Fraction(1, 1000), t + d
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with VideoReader(path) as reader:
            assert not reader.frame_count_exact
            frames = torch.stack(list(reader))
        assert frames[:, 0, 0, 0].tolist() == [10 * i for i in range(20)]
        cut = tmp_path / "cut.mkv"  # and a truncated one is still caught
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(VideoDecodeError, match="truncated"):
            with VideoReader(cut) as reader:
                list(reader)

    def test_abandoned_iteration_stops_thread_and_closes_file(self, ffv1_video):
        path, ref = ffv1_video
        before = threading.active_count()
        reader = VideoReader(path, prefetch=2)  # no `with`, no close()
        for frame in reader:
            break
        assert torch.equal(frame, ref[0])
        assert threading.active_count() == before and reader._container is None

    def test_iterate_once(self, ffv1_video):
        path, _ = ffv1_video
        with VideoReader(path, end=2) as reader:
            assert len(list(reader)) == 2
            with pytest.raises(ValueError, match="once"):
                list(reader)

    @pytest.mark.cuda
    def test_cuda_device(self, ffv1_video):
        path, ref = ffv1_video
        with VideoReader(path, batch_size=8, device="cuda") as reader:
            got = torch.cat([b.cpu() for b in reader])
        assert torch.equal(got, ref)


class TestVideoWriter:
    def test_bad_paths_and_frames_are_named(self, tmp_path):
        (tmp_path / "mask.mp4").mkdir()  # a folder named like a video: not silently a PNG sequence
        with pytest.raises(IsADirectoryError, match="mask.mp4': it is an existing folder"):
            VideoWriter(tmp_path / "mask.mp4")
        with VideoWriter(tmp_path / "mask.mp4", format="png") as writer:  # unless asked for
            writer.write(torch.zeros(1, 2, 2, dtype=torch.uint8))
        assert (tmp_path / "mask.mp4" / "000000.png").exists()
        with pytest.raises(ValueError, match="cannot create video .*clip.xyz"):
            with VideoWriter(tmp_path / "clip.xyz") as writer:
                writer.write(torch.zeros(3, 4, 4, dtype=torch.uint8))
        with pytest.raises(ShapeError, match=r"H, W >= 1, got \(1, 3, 0, 4\)"):
            with VideoWriter(tmp_path / "empty.mkv") as writer:
                writer.write(torch.zeros(3, 0, 4, dtype=torch.uint8))
        with pytest.raises(ValueError, match="positive finite"):
            VideoWriter(tmp_path / "x.mkv", fps=float("inf"))

    def test_mkv_roundtrip_rgb_and_mask(self, tmp_path):
        rgb = _chw(_frames(9, 17, 33, seed=5))
        path = tmp_path / "out.mkv"
        with VideoWriter(path, fps=12) as writer:
            writer.write(rgb[:4])
            for f in rgb[4:]:
                writer.write(f)
        assert writer.frames_written == 9
        with VideoReader(path, batch_size=100) as reader:
            assert reader.fps == pytest.approx(12)
            (got,) = list(reader)
        assert torch.equal(got, rgb)

        masks = torch.rand(6, 1, 17, 33, generator=torch.Generator().manual_seed(0)) > 0.5
        mpath = tmp_path / "mask.mkv"
        with VideoWriter(mpath) as writer:
            writer.write(masks)
        with VideoReader(mpath, gray=True, batch_size=100) as reader:
            (got,) = list(reader)
        assert torch.equal(got, masks.to(torch.uint8) * 255)

    def test_mp4_lossless(self, tmp_path):
        rgb = _chw(_frames(5, 16, 24, seed=6))
        path = tmp_path / "out.mp4"
        with VideoWriter(path) as writer:
            writer.write(rgb)
        with VideoReader(path, batch_size=100) as reader:
            (got,) = list(reader)
        assert torch.equal(got, rgb)

    def test_lossy_default(self, tmp_path):
        rgb = _chw(_frames(5, 32, 48, seed=7))
        path = tmp_path / "lossy.mp4"
        with VideoWriter(path, lossless=False) as writer:
            writer.write(rgb)
        with VideoReader(path, batch_size=100) as reader:
            (got,) = list(reader)
        assert (got.float() - rgb.float()).abs().mean() < 10

    def test_png_sequence_roundtrip(self, tmp_path):
        rgb = _chw(_frames(5, 9, 11, seed=8))
        out = tmp_path / "frames"
        with VideoWriter(out, format="png") as writer:
            writer.write(rgb)
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"{i:06d}.png" for i in range(5)]  # no temporary files left
        with VideoReader(out, batch_size=10) as reader:
            (got,) = list(reader)
        assert torch.equal(got, rgb)

    @pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
    def test_playable_after_exception(self, tmp_path, exc_type):
        rgb = _chw(_frames(6, 16, 16, seed=9))
        path = tmp_path / "partial.mkv"
        with pytest.raises(exc_type):
            with VideoWriter(path) as writer:
                writer.write(rgb[:4])
                raise exc_type("interrupted")
        with VideoReader(path, batch_size=100) as reader:
            (got,) = list(reader)
        assert torch.equal(got, rgb[:4])

    @pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
    @pytest.mark.parametrize("durable", [False, True], ids=["default", "durable"])
    @pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
    def test_playable_after_sigkill(self, tmp_path, suffix, durable):
        # a process killed outright never closes the file: the fragmented MP4 / short Matroska
        # clusters must still leave every frame older than about a second readable, and with
        # durable=True every frame but the last written
        path = tmp_path / f"killed{suffix}"
        script = textwrap.dedent(f"""
            import os, signal, torch
            from torchgmm.io import VideoWriter
            writer = VideoWriter({str(path)!r}, fps=25, durable={durable})
            for i in range(200):
                frame = torch.zeros(1, 1, 32, 48, dtype=torch.uint8)
                frame[..., i % 32, :] = 255  # a bar whose row encodes the frame index
                writer.write(frame)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        with VideoReader(path, batch_size=1000) as reader:
            (got,) = list(reader)
        assert (199 if durable else 200 - 25 - 50) <= len(got) <= 200  # default: ~1 s + encoder delay lost
        rows = got[:, 0].float().mean(dim=2).argmax(dim=1)
        assert torch.equal(rows, torch.arange(len(got)) % 32)

    def test_container_options_replace_crash_safe_defaults(self, tmp_path):
        rgb = _chw(_frames(6, 16, 16, seed=9))
        paths = {}
        for name, options in (("fragmented", None), ("classic", {"movflags": "faststart"})):
            paths[name] = tmp_path / f"{name}.mp4"
            with VideoWriter(paths[name], container_options=options) as writer:
                writer.write(rgb)
            with VideoReader(paths[name], batch_size=100) as reader:
                (got,) = list(reader)
            assert torch.equal(got, rgb)
        assert b"moof" in paths["fragmented"].read_bytes()
        data = paths["classic"].read_bytes()
        assert b"moof" not in data and data.index(b"moov") < data.index(b"mdat")  # index first

    @pytest.mark.parametrize(
        "codec,suffix,lossless,tol",
        [
            ("mjpeg", ".avi", False, 12.0),  # needs full-range yuvj420p, its native format
            ("libx264", ".mp4", True, 1.0),  # lossless: 4:4:4, no chroma subsampling
            ("mpeg4", ".avi", False, 12.0),
        ],
    )
    def test_explicit_codec_gets_a_working_pixel_format(self, tmp_path, codec, suffix, lossless, tol):
        rgb = _chw(_frames(6, 32, 48, seed=3))
        path = tmp_path / f"clip{suffix}"
        with VideoWriter(path, codec=codec, lossless=lossless) as writer:
            writer.write(rgb)
        with VideoReader(path, batch_size=100) as reader:
            (got,) = list(reader)
        assert got.shape == rgb.shape
        assert (got.float() - rgb.float()).abs().mean() < tol

    def test_gray_after_rgb_is_replicated(self, tmp_path):
        # the resume pattern: copy an earlier (RGB-decoded) mask video, then append masks
        masks = torch.rand(6, 1, 8, 10, generator=torch.Generator().manual_seed(3)) > 0.5
        first = tmp_path / "first.mkv"
        with VideoWriter(first) as writer:
            writer.write(masks[:3])
        path = tmp_path / "resumed.mkv"
        with VideoWriter(path) as writer, VideoReader(first) as old:
            for frame in old:  # (3, H, W): grey decoded as RGB
                writer.write(frame)
            writer.write(masks[3:])
        with VideoReader(path, gray=True, batch_size=10) as reader:
            (got,) = list(reader)
        assert torch.equal(got, masks.to(torch.uint8) * 255)

    def test_errors(self, tmp_path):
        with VideoWriter(tmp_path / "a.mkv") as writer:
            with pytest.raises(TypeError, match="uint8 or bool"):
                writer.write(torch.zeros(3, 8, 8))
            with pytest.raises(ValueError, match=r"\(C, H, W\)"):
                writer.write(torch.zeros(2, 8, 8, dtype=torch.uint8))
            writer.write(torch.zeros(3, 8, 8, dtype=torch.uint8))
            with pytest.raises(ValueError, match="must all be"):
                writer.write(torch.zeros(3, 8, 10, dtype=torch.uint8))
        with pytest.raises(ValueError, match="closed"):
            writer.write(torch.zeros(3, 8, 8, dtype=torch.uint8))
        with pytest.raises(FileNotFoundError, match="missing"):
            VideoWriter(tmp_path / "missing" / "x.mkv")
        # an encoder that rejects the frame: the encoder's error, naming the file, not a close error
        with pytest.raises(ValueError, match=r"odd\.mp4.*libx264"):
            with VideoWriter(tmp_path / "odd.mp4", codec="libx264", pix_fmt="yuv420p", lossless=False) as w:
                w.write(torch.zeros(3, 17, 33, dtype=torch.uint8))

    def test_lossy_odd_size_default(self, tmp_path):
        rgb = _chw(_frames(3, 17, 33, seed=10))
        with VideoWriter(tmp_path / "odd.mp4", lossless=False) as writer:
            writer.write(rgb)
        with VideoReader(tmp_path / "odd.mp4", batch_size=10) as reader:
            (got,) = list(reader)
        assert got.shape == rgb.shape and (got.float() - rgb.float()).abs().mean() < 10


class TestCommandLineValues:
    @pytest.mark.parametrize(
        "text,value", [("0", 0), ("300", 300), (" 12 ", 12), ("12.5s", 12.5), ("2s", 2.0), (".5s", 0.5), ("-3", -3)]
    )
    def test_parse_position(self, text, value):
        got = parse_position(text)
        assert got == value and type(got) is type(value)  # int: frame index, float: seconds

    @pytest.mark.parametrize("text", ["", "12.5", "s", "12 frames", "1e3", "3ms", "12.5 sec", "nan s"])
    def test_parse_position_refuses(self, text):
        with pytest.raises(ValueError, match=r"`--start` must be a frame index .* seconds with an s suffix"):
            parse_position(text, "--start")

    def test_negative_position_is_refused_by_the_reader(self, ffv1_video):
        path, _ = ffv1_video
        with pytest.raises(ValueError, match=r"`start` must be >= 0, got -3"):
            VideoReader(path, start=parse_position("-3"))
        with pytest.raises(ValueError, match=r"`end` \(seconds\) must be finite and >= 0, got -0.5"):
            VideoReader(path, end=parse_position("-0.5s"))

    @pytest.mark.parametrize("text,value", [("640x360", (360, 640)), ("33X17", (17, 33)), (" 8 x 4 ", (4, 8))])
    def test_parse_size(self, text, value):
        assert parse_size(text) == value  # (H, W), as VideoReader's size

    @pytest.mark.parametrize("text", ["640", "640x", "x360", "0x360", "640x0", "-640x360", "640x360x3", "64.5x32"])
    def test_parse_size_refuses(self, text):
        with pytest.raises(ValueError, match=r"`--size` must be WIDTHxHEIGHT in pixels, both >= 1"):
            parse_size(text, "--size")


class TestWriterThread:
    def test_frames_equal_a_plain_writer_and_masks_are_one_grey_plane(self, tmp_path):
        from torchgmm.io.video import WriterThread

        g = torch.Generator().manual_seed(0)
        masks = torch.rand(12, 1, 20, 30, generator=g) > 0.7
        with WriterThread(VideoWriter(tmp_path / "t.mp4", fps=10)) as threaded:
            for m in masks:
                threaded.write(m)
        assert threaded.frames_written == 12
        assert threaded.writer._encoder == "libx264 (gray)"  # lossless H.264 of one plane (4:0:0)
        with VideoReader(tmp_path / "t.mp4", gray=True, batch_size=100) as reader:
            (back,) = list(reader)
        assert torch.equal(back > 127, masks)

    @pytest.mark.parametrize("maxsize", [0, 4])
    def test_an_error_of_the_thread_is_raised_to_the_caller(self, tmp_path, maxsize):
        from torchgmm._checks import ShapeError
        from torchgmm.io.video import WriterThread

        writer = WriterThread(VideoWriter(tmp_path / "e.mkv", fps=10), maxsize=maxsize)
        writer.write(torch.zeros(1, 8, 8, dtype=torch.uint8))
        with pytest.raises(ShapeError, match="must all be"):  # at once, or from the thread at the latest here
            writer.write(torch.zeros(1, 9, 9, dtype=torch.uint8))  # another size: the writer refuses it
            writer.drain()
        writer.close()
        assert writer.frames_written == 1


def test_a_12_bit_png_sequence_spans_the_full_8_bit_range(tmp_path):
    # one bit-depth rule for every job: as segment does (to_uint8), not the high byte (0..15)
    from PIL import Image

    from torchgmm.pixels import to_uint8

    ramp = (np.linspace(0, 4095, 32 * 24).reshape(24, 32)).astype(np.uint16)
    for i in range(3):
        Image.fromarray(ramp).save(tmp_path / f"f{i:03d}.png")  # mode I;16: 16-bit PNG, 12-bit data
    with VideoReader(tmp_path, gray=True, batch_size=10) as reader:
        (frames,) = list(reader)
    assert frames.dtype == torch.uint8 and int(frames.min()) == 0 and int(frames.max()) == 255
    assert torch.equal(frames[0, 0], to_uint8(torch.from_numpy(ramp)[None])[0])


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_lossless_grey_video_keeps_every_level(tmp_path, suffix):
    # a one-channel lossless video (masks: 0 / 127 / 255 with shadows) reads back as written:
    # H.264 has no grey format, so the file must say full range or decoders stretch 16..235
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(3, 1, 1, 1)
    with VideoWriter(tmp_path / f"grey{suffix}", fps=10) as writer:
        writer.write(levels)
    for gray in (True, False):
        with VideoReader(tmp_path / f"grey{suffix}", gray=gray) as reader:
            frames = torch.stack(list(reader))
        assert torch.equal(frames, levels.expand(-1, frames.shape[1], -1, -1))
