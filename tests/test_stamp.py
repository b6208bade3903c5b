"""Stamped frames read back exactly, raw and through real VP8 and H264 codecs."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from rtc.stamp import (
    GRID_COLS,
    GRID_ROWS,
    Stamp,
    block_size,
    draw_frame,
    draw_video_frame,
    luma,
    read_stamp,
    stamp_height,
)

FPS = 15
SIZES = [(160, 120), (320, 240), (330, 250), (640, 480), (1280, 720)]


def stamps(count: int, tag: int = 0xBEEF) -> list[Stamp]:
    # Counters and times that exercise high bits, as a long-running client would.
    return [Stamp(tag, 4_000_000_000 + i, 1_700_000_000_000 + i * 67) for i in range(count)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_raw_round_trip(width: int, height: int) -> None:
    for stamp in [Stamp(0, 0, 0), Stamp(0xFFFF, 2**32 - 1, 2**48 - 1), *stamps(5)]:
        image = draw_frame(stamp, width, height)
        assert image.shape == (height, width, 3)
        assert image.dtype == np.uint8
        assert read_stamp(image) == stamp
        assert read_stamp(image[:, :, ::-1]) == stamp  # BGR reads the same
        assert read_stamp(image.mean(axis=2).astype(np.uint8)) == stamp  # grey


def test_pattern_moves_below_the_stamp() -> None:
    first, second = (draw_frame(s, 320, 240) for s in stamps(2))
    below = stamp_height(320)
    assert not np.array_equal(first[below:], second[below:])
    first_yuv, second_yuv = (luma(draw_video_frame(s, 320, 240)) for s in stamps(2))
    assert not np.array_equal(first_yuv[below:], second_yuv[below:])


def make_encoder(codec: str, width: int, height: int, bit_rate: int) -> av.CodecContext:
    """An encoder set up as aiortc sets up its own (realtime, no lookahead)."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate = bit_rate
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.framerate = fractions.Fraction(FPS, 1)
    if codec == "libvpx":
        encoder.options = {
            "deadline": "realtime",
            "cpu-used": "-6",
            "lag-in-frames": "0",
            "minrate": str(bit_rate),
            "maxrate": str(bit_rate),
            "bufsize": str(bit_rate),
        }
    else:
        encoder.profile = "Baseline"
        encoder.options = {"tune": "zerolatency", "level": "31"}
    return encoder


@pytest.mark.parametrize(("codec", "decoder_name"), [("libvpx", "libvpx"), ("libx264", "h264")])
@pytest.mark.parametrize(("width", "height"), [(160, 120), (320, 240), (640, 480)])
def test_codec_round_trip_low_bitrate(
    codec: str, decoder_name: str, width: int, height: int
) -> None:
    sent = stamps(90)
    encoder = make_encoder(codec, width, height, bit_rate=300_000)
    decoder = av.CodecContext.create(decoder_name, "r")
    read: list[Stamp | None] = []
    packets: list[av.Packet] = []
    for index, stamp in enumerate(sent):
        frame = draw_video_frame(stamp, width, height)
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    for packet in packets:
        for decoded in decoder.decode(packet):
            read.append(read_stamp(luma(decoded)))
    for decoded in decoder.decode(None):
        read.append(read_stamp(luma(decoded)))

    # Every frame, in order, with the exact stamp it was drawn with.
    assert read == sent


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_video_frame_shows_the_same_picture(width: int, height: int) -> None:
    for stamp in stamps(3):
        frame = draw_video_frame(stamp, width, height)
        assert (frame.format.name, frame.width, frame.height) == ("yuv420p", width, height)
        assert read_stamp(luma(frame)) == stamp
        rgb = frame.reformat(format="rgb24").to_ndarray()
        assert read_stamp(rgb) == stamp
        # The same picture as draw_frame, up to YUV rounding.
        assert np.abs(rgb.astype(int) - draw_frame(stamp, width, height)).mean() < 4


def test_rgb_frame_reads_after_conversion_to_yuv() -> None:
    stamp = stamps(1)[0]
    frame = av.VideoFrame.from_ndarray(draw_frame(stamp, 320, 240), format="rgb24")
    yuv = frame.reformat(format="yuv420p")
    assert read_stamp(luma(yuv)) == stamp
    assert read_stamp(yuv.to_ndarray(format="bgr24")) == stamp


def test_any_flipped_block_is_rejected() -> None:
    good = draw_frame(stamps(1)[0], 320, 240)
    block = block_size(320)
    for bit in range(GRID_ROWS * GRID_COLS):
        image = good.copy()
        row, col = divmod(bit, GRID_COLS)
        cell = image[row * block : (row + 1) * block, col * block : (col + 1) * block]
        cell[...] = 255 - cell
        assert read_stamp(image) is None, f"block {bit} flipped"


def test_unstamped_images_are_rejected() -> None:
    rng = np.random.default_rng(1)
    stamped = draw_frame(stamps(1)[0], 320, 240)
    below = stamp_height(320)
    unstamped = [
        np.zeros((240, 320, 3), np.uint8),
        np.full((240, 320, 3), 255, np.uint8),
        np.full((240, 320), 128, np.uint8),
        stamped[below:].copy(),  # the moving pattern alone
        *(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(50)),
    ]
    for image in unstamped:
        assert read_stamp(image) is None
    # Too small to hold a stamp, and not an image at all.
    assert read_stamp(stamped[:100, :150]) is None
    assert read_stamp(np.zeros(10, np.uint8)) is None


def test_random_block_patterns_pass_the_crc_only_by_chance() -> None:
    # Clean black/white grids with the right sync header but random payload and
    # CRC bits: the CRC must reject about 255 in 256 of them.
    rng = np.random.default_rng(2)
    image = draw_frame(stamps(1)[0], 320, 240)
    block = block_size(320)
    sync = np.unpackbits(np.frombuffer(bytes([0xA5, 0xC3]), np.uint8))
    trials = 2000
    accepted = 0
    for _ in range(trials):
        bits = np.concatenate([sync, rng.integers(0, 2, GRID_ROWS * GRID_COLS - 16, np.uint8)])
        grid = (bits.reshape(GRID_ROWS, GRID_COLS) * 255).astype(np.uint8)
        image[: GRID_ROWS * block, : GRID_COLS * block] = grid.repeat(block, 0).repeat(block, 1)[
            :, :, None
        ]
        accepted += read_stamp(image) is not None
    assert 0 < accepted < trials * 4 / 256


def test_stamp_fields_must_fit() -> None:
    with pytest.raises(ValueError):
        Stamp(1 << 16, 0, 0)
    with pytest.raises(ValueError):
        Stamp(0, -1, 0)
    with pytest.raises(ValueError):
        Stamp(0, 0, 1 << 48)
    with pytest.raises(ValueError):
        draw_frame(Stamp(0, 0, 0), 159, 120)
