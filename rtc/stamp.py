"""Synthetic video frames that carry a readable stamp through a lossy codec.

A stamped frame shows its :class:`Stamp` as a grid of black and white blocks in
its top rows and a scrolling colour pattern below, so an encoder has real
motion to code. After an encode/decode round trip :func:`read_stamp` recovers
the stamp, which lets tests and benchmarks check frame order, loss and
end-to-end latency without trusting any timestamp the media stack rewrites.

Layout (all bits most significant first, row by row, left to right)::

    | sync 16 | tag 16 | counter 32 | send_time_ms 48 | crc 8 |  = 120 bits
    = GRID_ROWS x GRID_COLS = 6 x 20 square blocks from the top-left corner

The block side is derived from the frame width alone (see :func:`block_size`),
so a reader needs nothing but the decoded image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "GRID_COLS",
    "GRID_ROWS",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "Stamp",
    "block_size",
    "draw_frame",
    "draw_video_frame",
    "luma",
    "read_stamp",
    "stamp_height",
]

GRID_COLS = 20
GRID_ROWS = 6
MIN_WIDTH = 160
MIN_HEIGHT = 120

# A fixed header with many transitions: a flat or smooth image cannot produce
# it, so unstamped video is rejected before the 8-bit CRC (1 in 256) matters.
_SYNC = 0xA5C3
_TAG_BITS = 16
_COUNTER_BITS = 32
_TIME_BITS = 48
_PAYLOAD_BYTES = (_TAG_BITS + _COUNTER_BITS + _TIME_BITS) // 8

# A block whose mean sits this close to mid-grey is neither black nor white:
# the image is not stamped, or the codec smeared it beyond trust.
_AMBIGUOUS = 40
_BLACK = 0
_WHITE = 255
# Limited-range luma, what an RGB to YUV conversion makes of black and white:
# both drawings then decode to the same picture.
_Y_BLACK = 16
_Y_WHITE = 235
_NEUTRAL_CHROMA = 128

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Stamp:
    """What a stamped frame carries.

    ``tag`` identifies the sender (16 bits), ``counter`` numbers its frames
    (32 bits) and ``send_time_ms`` is ``int(time.time() * 1000)`` when the
    frame was drawn (48 bits).
    """

    tag: int
    counter: int
    send_time_ms: int

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("tag", self.tag, _TAG_BITS),
            ("counter", self.counter, _COUNTER_BITS),
            ("send_time_ms", self.send_time_ms, _TIME_BITS),
        ):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{name}={value} does not fit in {bits} unsigned bits")

    def payload(self) -> bytes:
        """The bytes the CRC covers: tag, counter, send_time_ms, big-endian."""
        return (
            self.tag.to_bytes(_TAG_BITS // 8, "big")
            + self.counter.to_bytes(_COUNTER_BITS // 8, "big")
            + self.send_time_ms.to_bytes(_TIME_BITS // 8, "big")
        )


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _crc8_table()


def _crc8(data: bytes) -> int:
    """CRC-8/SMBUS (polynomial 0x07, initial value 0, no reflection)."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def block_size(width: int) -> int:
    """Side in pixels of one stamp block for frames ``width`` pixels wide.

    A multiple of 8 so blocks sit on codec transform boundaries, scaled with the
    width (16 px at 320, 32 px at 640) and capped so large frames keep most of
    their area for the moving pattern.
    """
    return min(32, max(8, width // GRID_COLS // 8 * 8))


def stamp_height(width: int) -> int:
    """How many top rows of a ``width``-wide frame the stamp occupies."""
    return GRID_ROWS * block_size(width)


@functools.lru_cache(maxsize=16)
def _background(width: int, height: int) -> tuple[Image, int, int]:
    """A colour pattern periodic along x, plus its period and scroll speed.

    Drawing a frame is then one slice and copy: the pattern is built once at
    ``width + period`` columns and each frame views it at a shifted offset.
    """
    block = block_size(width)
    period = 8 * block
    speed = max(1, block // 4)
    x = np.arange(width + period, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    turn = np.float32(2 * np.pi / period)
    red = 128 + 100 * np.sin(turn * (x + y))
    green = 128 + 100 * np.sin(turn * (x - 2 * y))
    blue = np.broadcast_to(40 + 175 * y / max(1, height - 1), red.shape)
    pattern = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    pattern.flags.writeable = False
    return pattern, period, speed


def _stamp_blocks(stamp: Stamp, block: int, black: int, white: int) -> Image:
    """The stamp as a ``GRID_ROWS * block`` x ``GRID_COLS * block`` image."""
    payload = stamp.payload()
    data = _SYNC.to_bytes(2, "big") + payload + bytes([_crc8(payload)])
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    grid = np.where(bits.reshape(GRID_ROWS, GRID_COLS), np.uint8(white), np.uint8(black))
    return grid.repeat(block, axis=0).repeat(block, axis=1)


def _check_size(width: int, height: int) -> None:
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"frame {width}x{height} is smaller than {MIN_WIDTH}x{MIN_HEIGHT}")


def draw_frame(stamp: Stamp, width: int, height: int) -> Image:
    """Draw a ``height`` x ``width`` x 3 RGB frame carrying ``stamp``.

    The stamp blocks are pure black and white, so the image reads the same as
    RGB or BGR. The pattern below scrolls with ``stamp.counter``.
    """
    _check_size(width, height)
    pattern, period, speed = _background(width, height)
    block = block_size(width)
    offset = stamp.counter * speed % period
    image = pattern[:, offset : offset + width].copy()
    blocks = _stamp_blocks(stamp, block, _BLACK, _WHITE)
    image[: blocks.shape[0], : blocks.shape[1]] = blocks[:, :, None]
    return image


def _plane_array(plane: av.video.plane.VideoPlane) -> Image:
    """A plane's pixels as a writable view, without its row padding."""
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
    return rows[: plane.height, : plane.width]


@functools.lru_cache(maxsize=16)
def _background_planes(width: int, height: int) -> tuple[Image, Image, Image]:
    """:func:`_background` converted once to Y, U and V planes."""
    pattern, _, _ = _background(width, height)
    frame = av.VideoFrame.from_ndarray(pattern, format="rgb24").reformat(format="yuv420p")
    y, u, v = (_plane_array(plane).copy() for plane in frame.planes)
    return y, u, v


def draw_video_frame(stamp: Stamp, width: int, height: int) -> av.VideoFrame:
    """The picture of :func:`draw_frame`, drawn straight into a yuv420p frame.

    This is what an encoder wants: it skips the RGB to YUV conversion, which
    costs more than drawing (about 2 ms a frame at 640x480). ``pts`` and
    ``time_base`` are left for the caller.
    """
    _check_size(width, height)
    _, period, speed = _background(width, height)
    y_pattern, u_pattern, v_pattern = _background_planes(width, height)
    # period and speed are even, so the chroma planes shift by exactly half.
    offset = stamp.counter * speed % period
    frame = av.VideoFrame(width, height, "yuv420p")
    y, u, v = (_plane_array(plane) for plane in frame.planes)
    y[...] = y_pattern[:, offset : offset + y.shape[1]]
    u[...] = u_pattern[:, offset // 2 : offset // 2 + u.shape[1]]
    v[...] = v_pattern[:, offset // 2 : offset // 2 + v.shape[1]]

    blocks = _stamp_blocks(stamp, block_size(width), _Y_BLACK, _Y_WHITE)
    rows, cols = blocks.shape
    y[:rows, :cols] = blocks
    u[: rows // 2, : cols // 2] = _NEUTRAL_CHROMA
    v[: rows // 2, : cols // 2] = _NEUTRAL_CHROMA
    return frame


def luma(frame: av.VideoFrame) -> Image:
    """The frame's luma for :func:`read_stamp`, without copying where possible.

    Decoders hand out planar YUV, whose first plane is exactly what the reader
    needs; converting the whole frame to RGB would cost more than reading.
    """
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        return _plane_array(frame.planes[0])
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def read_stamp(image: npt.NDArray[np.uint8]) -> Stamp | None:
    """Read the stamp from a decoded frame, or ``None`` if there is none.

    ``image`` is ``height x width x channels`` (any channel order, e.g.
    ``frame.to_ndarray(format="rgb24")``) or ``height x width`` luma (the Y
    plane, or ``format="gray"``); only the top :func:`stamp_height` rows are
    looked at, so a view of just those rows (full width) works too. Returns
    ``None`` when the frame is too small, a block is neither black nor white,
    the sync header is wrong or the CRC fails.
    """
    if image.ndim not in (2, 3):
        return None
    width = image.shape[1]
    block = block_size(width)
    rows = stamp_height(width)
    if width < MIN_WIDTH or image.shape[0] < rows:
        return None

    region = image[:rows, : GRID_COLS * block]
    # Only the middle half of each block is sampled: edges ring under lossy codecs.
    cells = region.reshape(GRID_ROWS, block, GRID_COLS, block, -1)
    inner = cells[:, block // 4 : block - block // 4, :, block // 4 : block - block // 4]
    means = inner.mean(axis=(1, 3, 4), dtype=np.float32).ravel()
    threshold = (_BLACK + _WHITE) / 2
    if np.any(np.abs(means - threshold) < _AMBIGUOUS):
        return None

    data = np.packbits(means > threshold).tobytes()
    if int.from_bytes(data[:2], "big") != _SYNC:
        return None
    payload, crc = data[2 : 2 + _PAYLOAD_BYTES], data[2 + _PAYLOAD_BYTES]
    if _crc8(payload) != crc:
        return None
    return Stamp(
        tag=int.from_bytes(payload[0:2], "big"),
        counter=int.from_bytes(payload[2:6], "big"),
        send_time_ms=int.from_bytes(payload[6:12], "big"),
    )
