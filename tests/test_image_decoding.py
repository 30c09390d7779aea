"""decode_image_file: good files equal independent decoders, damaged ones raise by name.

The damaged cases run in a subprocess: a regression to a decoder that crashes (libpng in
torchvision segfaults on a short PNG) must fail the test, not take pytest down.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from _damaged import adam7_png, damaged_files, encode, pattern, png_bytes, scanlines
from torchgmm.io.images import MAX_IMAGE_PIXELS, decode_image_file


def _decode_in_subprocess(paths: list[str]) -> dict[str, str]:
    """path -> "ok (shape)" or "ExceptionType: message", from a fresh interpreter."""
    script = textwrap.dedent("""
        import json, sys
        from torchgmm.io.images import decode_image_file
        out = {}
        for path in json.loads(sys.argv[1]):
            print("decoding", path, file=sys.stderr, flush=True)  # the last one names a crash
            try:
                out[path] = "ok " + str(tuple(decode_image_file(path).shape))
            except Exception as exc:
                out[path] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"the decoder crashed (exit {proc.returncode}); last lines:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_damaged_file_raises_a_value_error_naming_it(tmp_path):
    cases = damaged_files(tmp_path)
    results = _decode_in_subprocess([str(path) for path, _ in cases.values()])
    for name, (path, message) in cases.items():
        got = results[str(path)]
        assert got.startswith("ValueError: "), (name, got)
        assert str(path) in got, (name, got)
        assert __import__("re").search(message, got), (name, message, got)


def test_header_size_limit_is_an_argument(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(pattern(), "PNG"))
    assert decode_image_file(path, max_pixels=64 * 48).shape == (3, 48, 64)
    with pytest.raises(ValueError, match=r"claims 64x48 pixels \(3,072\), more than max_pixels=3,071"):
        decode_image_file(path, max_pixels=64 * 48 - 1)
    assert MAX_IMAGE_PIXELS >= 100_000_000  # a 100-megapixel photo is an image, not an attack


class TestGoodFiles:
    """Pixels equal to Pillow's or numpy's own (independent of which decoder runs)."""

    @pytest.mark.parametrize("c", [1, 3])
    @pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
    def test_lossless_formats_hold_the_array(self, tmp_path, fmt, c):
        arr = pattern(37, 53, c)
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(encode(arr, fmt))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "NumPy array is not writable" from torch
            img = decode_image_file(path)
        expected = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        assert img.dtype == torch.uint8 and np.array_equal(img.numpy(), expected)

    def test_rgba_and_palette_png_drop_alpha(self, tmp_path):
        rgba = np.dstack([pattern(), np.full((48, 64), 7, np.uint8)])
        (tmp_path / "a.png").write_bytes(encode(rgba, "PNG"))
        assert np.array_equal(decode_image_file(tmp_path / "a.png").numpy(), rgba[..., :3].transpose(2, 0, 1))
        palette = Image.fromarray(pattern()).quantize(16)
        buf = io.BytesIO()
        palette.save(buf, "PNG", bits=4)
        (tmp_path / "p.png").write_bytes(buf.getvalue())
        expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(decode_image_file(tmp_path / "p.png").numpy(), expected)

    def test_one_bit_png(self, tmp_path):
        bits = pattern(33, 29, 1) > 128  # a width that is not a multiple of 8: padded rows
        Image.fromarray(bits).save(tmp_path / "b.png")
        img = decode_image_file(tmp_path / "b.png")
        assert np.array_equal(img.numpy()[0], bits.astype(np.uint8) * 255)

    @pytest.mark.parametrize("c", [1, 3])
    def test_interlaced_png(self, tmp_path, c):
        arr = pattern(13, 11, c)  # smaller than some Adam7 passes: empty passes are skipped
        (tmp_path / "i.png").write_bytes(adam7_png(arr))
        expected = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        assert np.array_equal(decode_image_file(tmp_path / "i.png").numpy(), expected)

    @pytest.mark.parametrize("colour, c", [(0, 1), (2, 3), (6, 4)])
    def test_16_bit_png_keeps_16_bits(self, tmp_path, colour, c):
        arr = pattern(9, 14, c, dtype=np.uint16)
        (tmp_path / "w.png").write_bytes(png_bytes(scanlines(arr.reshape(9, -1)), 14, 9, 16, colour))
        img = decode_image_file(tmp_path / "w.png")
        expected = (arr[None] if c == 1 else arr.transpose(2, 0, 1))[:3]
        assert img.dtype == torch.uint16 and np.array_equal(img.numpy().astype(np.int64), expected.astype(np.int64))

    def test_jpeg_equals_pillow_within_idct_rounding(self, tmp_path):
        (tmp_path / "a.jpg").write_bytes(encode(pattern(), "JPEG", quality=95))
        ours = decode_image_file(tmp_path / "a.jpg").numpy().astype(int)
        pil = np.asarray(Image.open(tmp_path / "a.jpg")).transpose(2, 0, 1).astype(int)
        assert np.abs(ours - pil).max() <= 2

    def test_the_format_is_told_by_content_not_name(self, tmp_path):
        (tmp_path / "really-a-jpeg.png").write_bytes(encode(pattern(), "JPEG"))
        (tmp_path / "really-a-png.jpg").write_bytes(encode(pattern(), "PNG"))
        assert decode_image_file(tmp_path / "really-a-jpeg.png").shape == (3, 48, 64)
        assert np.array_equal(decode_image_file(tmp_path / "really-a-png.jpg").numpy(), pattern().transpose(2, 0, 1))

    def test_modes(self, tmp_path):
        arr = pattern()
        (tmp_path / "a.png").write_bytes(encode(arr, "PNG"))
        (tmp_path / "g.png").write_bytes(encode(arr[..., 0], "PNG"))
        grey = decode_image_file(tmp_path / "a.png", mode="grey")
        luma = np.round(arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)
        assert grey.shape == (1, 48, 64) and np.abs(grey.numpy()[0].astype(int) - luma).max() <= 1
        rgb = decode_image_file(tmp_path / "g.png", mode="rgb")
        assert rgb.shape == (3, 48, 64) and np.array_equal(rgb.numpy(), np.repeat(arr[None, ..., 0], 3, 0))
        with pytest.raises(ValueError, match="`mode` must be"):
            decode_image_file(tmp_path / "a.png", mode="gray")


class TestDecodeWorkers:
    def _folder(self, tmp_path, names):
        for i, name in enumerate(names):
            (tmp_path / name).write_bytes(encode(pattern(8, 8 + i), "PNG"))
        from torchgmm.io.images import find_images

        return find_images([tmp_path])

    @pytest.mark.parametrize("workers", [1, 2])
    def test_a_crash_costs_only_its_file(self, tmp_path, workers):
        from _damaged import decode_or_crash
        from torchgmm.io.images import DecodeWorkers

        names = ["a.png", "b.png", "crash1.png", "c.png", "crash2.png", "d.png", "e.png"]
        sources = self._folder(tmp_path, names)
        items = list(DecodeWorkers(sources, workers=workers, decode=decode_or_crash))
        assert [item.index for item in items] == list(range(len(sources)))  # in order, all of them
        by_name = {item.source.path.name: item for item in items}
        for name in names:
            if name.startswith("crash"):
                assert by_name[name].image is None
                assert "decoding process was killed by SIGSEGV on this file" in by_name[name].error
                assert name in by_name[name].error
            else:  # the others are decoded, equal to decoding them here
                assert by_name[name].error is None
                assert torch.equal(by_name[name].image, decode_image_file(by_name[name].source.path))

    def test_bad_files_come_back_as_errors_and_workers_stop(self, tmp_path):
        from torchgmm.io.images import DecodeWorkers

        sources = self._folder(tmp_path, ["a.png", "b.png"])
        (tmp_path / "b.png").write_bytes(b"")
        pool = DecodeWorkers(sources, workers=2)
        items = list(pool)
        assert items[0].error is None and "the file is empty" in items[1].error
        assert pool._procs == []  # closed at the end of the iteration


# --- the tensor codec: torchvision's, TorchCodec's or Pillow, the same pixels -----------------
def _codecs() -> list[str]:
    """The codecs usable here (TorchCodec's image codecs need no FFmpeg, only its wheel)."""
    import importlib

    usable = ["torchvision", "pillow"]
    try:
        importlib.import_module("torchcodec.decoders").decode_jpeg  # noqa: B018
        importlib.import_module("torchcodec.encoders").PngEncoder  # noqa: B018
        usable.insert(1, "torchcodec")
    except Exception:  # noqa: BLE001 - not installed, or broken
        pass
    return usable


@pytest.fixture()
def use_codec(monkeypatch):
    """Make ``decode_image_file`` and ``write_png`` use the codec given to the returned call."""
    from torchgmm.io import images

    def use(name: str) -> None:
        monkeypatch.setattr(images, "_CODEC", name)

    return use


def _jpeg_cases(tmp_path):
    smooth = pattern(61, 83, 3)
    (tmp_path / "rgb.jpg").write_bytes(encode(smooth, "JPEG", quality=90))
    (tmp_path / "grey.jpg").write_bytes(encode(smooth[..., 1], "JPEG", quality=90))
    return [tmp_path / "rgb.jpg", tmp_path / "grey.jpg"]


@pytest.mark.parametrize("codec", ["torchcodec", "pillow"])
def test_other_codecs_decode_jpeg_as_torchvision_does(tmp_path, use_codec, codec):
    if codec not in _codecs():
        pytest.skip("TorchCodec is not installed (pip install torchcodec)")
    paths = _jpeg_cases(tmp_path)
    use_codec("torchvision")
    want = {(p, m): decode_image_file(p, mode=m) for p in paths for m in ("unchanged", "grey", "rgb")}
    use_codec(codec)
    for (path, mode), expected in want.items():
        got = decode_image_file(path, mode=mode)
        assert got.dtype == torch.uint8 and torch.equal(got, expected), (path.name, mode)


def test_sixteen_bit_colour_png_needs_a_tensor_codec(tmp_path, use_codec):
    arr = pattern(9, 14, 3, dtype=np.uint16)
    path = tmp_path / "w.png"
    path.write_bytes(png_bytes(scanlines(arr.reshape(9, -1)), 14, 9, 16, 2))
    for codec in set(_codecs()) - {"pillow"}:
        use_codec(codec)
        img = decode_image_file(path)
        assert img.dtype == torch.uint16 and np.array_equal(img.numpy().astype(np.int64), arr.transpose(2, 0, 1)), codec
    use_codec("pillow")
    with pytest.raises(ValueError, match=r"w\.png.*16-bit colour PNG needs torchvision's or TorchCodec's"):
        decode_image_file(path)


@pytest.mark.parametrize("c", [1, 3])
def test_write_png_with_each_codec_holds_the_pixels(tmp_path, use_codec, c):
    from torchgmm.io.images import write_png

    image = (
        torch.from_numpy(pattern(37, 53, c)).permute(2, 0, 1) if c == 3 else torch.from_numpy(pattern(37, 53, 1))[None]
    )
    written = {}
    for codec in _codecs():
        use_codec(codec)
        write_png(tmp_path / f"{codec}.png", image)
        written[codec] = (tmp_path / f"{codec}.png").read_bytes()
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / f"{codec}.png")).reshape(37, 53, c), image.permute(1, 2, 0).numpy()
        )
    if "torchcodec" in written:  # the same libpng, the same settings: the same file
        assert written["torchcodec"] == written["torchvision"]


def test_the_codec_falls_back_when_torchvision_drops_its_codecs(monkeypatch):
    from torchgmm.io import images

    monkeypatch.setattr(images, "_CODEC", None)
    # as if torchvision removed them: no image library, no torchvision.io
    monkeypatch.setattr(images, "_torchvision_image_libraries", lambda: [])
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    expected = "torchcodec" if "torchcodec" in _codecs() else "pillow"
    assert images.image_codec() == expected
    monkeypatch.setattr(images, "_CODEC", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    assert images.image_codec() == "pillow"
    monkeypatch.setattr(images, "_CODEC", None)
    monkeypatch.delitem(sys.modules, "torchvision.io")
    assert images.image_codec() == "torchvision"  # through torchvision.io, its library not found


def test_the_torchvision_codec_loads_without_importing_torchvision(tmp_path):
    # importing torchvision imports its models and ops: about a second of a job's start
    code = (
        "import sys; from torchgmm.io.images import image_codec, write_png, decode_image_file; import torch; "
        "x = torch.arange(60, dtype=torch.uint8).reshape(1, 6, 10); write_png(sys.argv[1], x); "
        "y = decode_image_file(sys.argv[1]); "
        "print(image_codec(), 'torchvision' in sys.modules, torch.equal(x, y))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.png")], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["torchvision", "False", "True"], out.stderr
