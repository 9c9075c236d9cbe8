"""The two JPEG decoders give one result, and EXIF orientation is applied on both (fgvc/image.py).

simplejpeg (libjpeg-turbo called directly) decodes colour JPEGs; OpenCV decodes everything else
and is the reference: the tests force it with decoder="opencv". Files that would exhaust or hang a
reader (a header declaring 900 megapixels, a FIFO, a JPEG cut short) are refused without decoding.
No timing is asserted here.
"""
import os
import struct

import cv2
import numpy as np
import pytest
from harness import bomb, jpeg_bytes, spoil

from fgvc import image
from fgvc.image import BadImage, exif_orientation, read_rgb


# ---------------------------------------------------------------- two decoders, one result

def photo(h, w, seed=0):
    """Smooth colour fields plus grain: chroma detail that subsampling and upsampling act on."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.add(img, rng.integers(0, 40, (h, w, 3), dtype=np.uint8))


SAMPLING = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
            "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}


@pytest.fixture
def decoders_used(monkeypatch):
    """How many files simplejpeg decoded, and how many OpenCV was asked to decode."""
    used = {"simplejpeg": 0, "opencv": 0}
    fast, slow = image._simplejpeg, image._opencv

    def counted_fast(buf, fast_dct, path):
        img = fast(buf, fast_dct, path)
        used["simplejpeg"] += img is not None
        return img

    def counted_slow(buf, path):
        used["opencv"] += 1
        return slow(buf, path)

    monkeypatch.setattr(image, "_simplejpeg", counted_fast)
    monkeypatch.setattr(image, "_opencv", counted_slow)
    return used


@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (801, 599)])
@pytest.mark.parametrize("sampling", sorted(SAMPLING))
@pytest.mark.parametrize("progressive", [0, 1])
def test_fast_path_gives_opencvs_pixels(tmp_path, decoders_used, shape, sampling, progressive):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), photo(*shape), [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                          SAMPLING[sampling], cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    fast = read_rgb(path)
    assert decoders_used == {"simplejpeg": 1, "opencv": 0}
    slow = read_rgb(path, decoder="opencv")
    assert decoders_used == {"simplejpeg": 1, "opencv": 1}
    assert fast.shape == slow.shape == (*shape, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert np.array_equal(fast, slow)  # the stated tolerance: none (the same libjpeg-turbo settings)


def test_fast_dct_option_moves_pixels_a_little(tmp_path):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), photo(480, 640), [cv2.IMWRITE_JPEG_QUALITY, 90])
    exact, fast = read_rgb(path).astype(int), read_rgb(path, fast=True).astype(int)
    assert fast.shape == exact.shape and 0 < np.abs(fast - exact).mean() < 3


def test_grayscale_jpeg_takes_the_fallback_and_is_the_same_image(tmp_path, decoders_used):
    path = tmp_path / "g.jpg"
    cv2.imwrite(str(path), photo(90, 70)[:, :, 1])
    img = read_rgb(path)
    assert decoders_used == {"simplejpeg": 0, "opencv": 1}
    assert img.shape == (90, 70, 3) and (img[..., 0] == img[..., 2]).all()
    assert np.array_equal(img, read_rgb(path, decoder="opencv"))


ODD = ["gray", "gray16_png", "cmyk", "rgba_png", "png_bytes"]
BAD = {"truncated": "truncated JPEG", "empty": "empty file", "text": "not a decodable image"}


@pytest.mark.parametrize("kind", ODD + sorted(BAD))
def test_every_odd_file_of_the_fault_suite_takes_the_fallback(tmp_path, decoders_used, kind):
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), photo(60, 80))
    spoil(path, kind)
    if kind in BAD:
        with pytest.raises(BadImage, match=BAD[kind]) as auto:
            read_rgb(path)
        with pytest.raises(BadImage) as ref:
            read_rgb(path, decoder="opencv")
        assert auto.value.reason == ref.value.reason and decoders_used["simplejpeg"] == 0
        return
    img = read_rgb(path)
    assert decoders_used == {"simplejpeg": 0, "opencv": 1}
    assert np.array_equal(img, read_rgb(path, decoder="opencv")) and img.shape == (60, 80, 3)


def test_a_jpeg_libjpeg_warns_about_is_refused_on_both_paths_unless_lenient(tmp_path, decoders_used, monkeypatch):
    # a corrupt byte in the entropy-coded data: libjpeg-turbo warns and still decodes; by default
    # that is an unreadable image on both paths (issue 15), --lenient-jpeg gives the same pixels on both
    good = bytearray(cv2.imencode(".jpg", photo(64, 64))[1].tobytes())
    sos = good.index(b"\xff\xda")
    good[sos + 40 : sos + 44] = b"\xff\xd0\xff\xd1"  # restart markers where none belong
    path = tmp_path / "c.jpg"
    path.write_bytes(bytes(good))
    for decoder in ("auto", "opencv"):
        with pytest.raises(BadImage, match="corrupt JPEG data"):
            read_rgb(path, decoder=decoder)
    assert decoders_used["opencv"] == 0
    monkeypatch.setitem(image.LIMITS, "lenient", True)
    assert np.array_equal(read_rgb(path), read_rgb(path, decoder="opencv"))


# ---------------------------------------------------------------- EXIF orientation

def with_exif(jpeg, orientation, order="II"):
    """`jpeg` bytes with an APP1 Exif segment holding IFD0 = {Orientation: orientation}, after SOI."""
    e = "<" if order == "II" else ">"
    tiff = (order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHIH2x", 0x0112, 3, 1, orientation) + struct.pack(e + "I", 0))
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def quadrants(h=40, w=60):
    """An upright picture no flip or turn leaves unchanged: four colours, top-left red."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (220, 30, 30)
    img[: h // 2, w // 2 :] = (30, 220, 30)
    img[h // 2 :, : w // 2] = (30, 30, 220)
    img[h // 2 :, w // 2 :] = (220, 220, 30)
    return img


@pytest.mark.parametrize("orientation,stored_turn", [(6, cv2.ROTATE_90_COUNTERCLOCKWISE), (8, cv2.ROTATE_90_CLOCKWISE)])
@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_exif_rotated_jpeg_decodes_upright(tmp_path, orientation, stored_turn, decoder):
    upright = quadrants()
    stored = cv2.rotate(upright, stored_turn)  # what a camera held sideways writes
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = tmp_path / "r.jpg"
    path.write_bytes(with_exif(jpeg, orientation))
    img = read_rgb(path, decoder=decoder)
    assert img.shape == upright.shape
    assert np.abs(img.astype(int) - upright).mean() < 4
    assert read_rgb(path, decoder=decoder, exif=False).shape == stored.shape  # the stored pixels on request


@pytest.mark.parametrize("order", ["II", "MM"])
def test_every_orientation_matches_opencvs_own_exif_handling(tmp_path, order):
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(photo(40, 60), cv2.COLOR_RGB2BGR))[1].tobytes()
    shapes = set()
    for orientation in range(1, 9):
        data = with_exif(jpeg, orientation, order)
        path = tmp_path / f"{orientation}.jpg"
        path.write_bytes(data)
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # applies it
        assert exif_orientation(data) == orientation
        for decoder in ("auto", "opencv"):
            assert np.array_equal(read_rgb(path, decoder=decoder), want), (orientation, decoder)
        shapes.add(want.shape)
    assert shapes == {(40, 60, 3), (60, 40, 3)}


def test_orientation_one_or_absent_leaves_the_image_as_stored(tmp_path):
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(photo(40, 60), cv2.COLOR_RGB2BGR))[1].tobytes()
    (tmp_path / "none.jpg").write_bytes(jpeg)
    (tmp_path / "one.jpg").write_bytes(with_exif(jpeg, 1))
    stored = read_rgb(tmp_path / "none.jpg", exif=False)
    for name in ("none.jpg", "one.jpg"):
        for decoder in ("auto", "opencv"):
            assert np.array_equal(read_rgb(tmp_path / name, decoder=decoder), stored)


def test_malformed_exif_is_ignored_not_fatal(tmp_path):
    jpeg = cv2.imencode(".jpg", photo(40, 60))[1].tobytes()
    good = with_exif(jpeg, 6)
    cases = {
        "orientation 9": with_exif(jpeg, 9),
        "bad TIFF magic": good.replace(b"II*\0", b"II+\0", 1),
        "IFD offset past the end": good.replace(b"II*\0\x08\0\0\0", b"II*\0\xff\xff\0\0", 1),
        "segment length past the file": good[:4] + b"\xff\xff" + good[6:],
    }
    assert exif_orientation(good) == 6 and exif_orientation(b"\x89PNG\r\n") == 1
    for name, data in cases.items():
        assert exif_orientation(data) == 1, name
    path = tmp_path / "m.jpg"
    path.write_bytes(cases["orientation 9"])
    assert read_rgb(path).shape == (40, 60, 3)


# ---------------------------------------------------------------- page cache

def test_a_single_pass_read_drops_the_file_from_the_page_cache(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), photo(40, 60))
    advice = []
    real = image.os.posix_fadvise
    monkeypatch.setattr(image.os, "posix_fadvise", lambda fd, off, n, how: advice.append(how) or real(fd, off, n, how))
    kept = read_rgb(path)
    assert advice == []  # training reads every epoch: the cache stays
    assert np.array_equal(read_rgb(path, cache=False), kept) and advice == [image.os.POSIX_FADV_DONTNEED]


def test_image_sizes_decodes_upright_where_the_json_has_none(tmp_path):
    from fgvc.annotations import Split
    from fgvc.image import image_sizes

    jpeg = cv2.imencode(".jpg", photo(40, 60))[1].tobytes()  # stored 60 wide, 40 high
    (tmp_path / "r.jpg").write_bytes(with_exif(jpeg, 6))
    (tmp_path / "j.jpg").write_bytes(with_exif(jpeg, 6))
    split = Split(name="val", json_path=None, root=tmp_path, image_ids=np.array([1, 2]), file_names=["r.jpg", "j.jpg"],
                  labels=None, sizes=np.array([[-1, -1], [60, 40]]))
    assert image_sizes(split).tolist() == [[40, 60], [60, 40]]  # decoded: upright; json: as written


# ---------------------------------------------------------------- decompression bombs, FIFOs, corrupt JPEGs

def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("decoded: the header alone should have refused it")

    monkeypatch.setattr(image, "_simplejpeg", never)  # refused from the header, before 900 MP are decoded
    monkeypatch.setattr(image, "_opencv", never)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb(jpeg_bytes()))
    with pytest.raises(BadImage, match=r"declares 30000 x 30000 pixels, more than --max-megapixels 100"):
        read_rgb(path)
    png = tmp_path / "bomb.png"
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    png.write_bytes(bytes(data))
    with pytest.raises(BadImage, match="declares 30000 x 30000"):
        read_rgb(png)


def test_a_fifo_in_place_of_an_image_is_unreadable_not_a_hang(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match=r"not a regular file \(a FIFO\)"):
        read_rgb(fifo)
    real = tmp_path / "real.jpg"
    real.write_bytes(jpeg_bytes())
    (tmp_path / "link.jpg").symlink_to(real)
    assert read_rgb(tmp_path / "link.jpg").shape == (60, 80, 3)  # a symlink to a regular file is fine


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_corrupt_jpeg_that_still_decodes_is_unreadable_unless_lenient(tmp_path, monkeypatch, decoder):
    data = jpeg_bytes(120, 160)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut in half, an end marker appended
    with pytest.raises(BadImage, match="corrupt JPEG data"):
        read_rgb(path, decoder=decoder)
    monkeypatch.setitem(image.LIMITS, "lenient", True)
    assert read_rgb(path, decoder=decoder).shape == (120, 160, 3)
