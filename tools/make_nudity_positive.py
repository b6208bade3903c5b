"""Make tests/data/nudity-positive.png: a generated picture the nudity model flags.

The tests need a frame the model scores as exposed, without shipping a photo
of a person. This searches for one with the model's own score as the guide:
a deterministic (seeded) hill-climb that starts from a skin-toned canvas and
keeps each random soft-edged ellipse it paints only if the model's best
exposed-class score goes up. Ellipses, not pixel noise, so the result
survives VP8 (each candidate is also scored after a VP8 round trip).

    .venv/bin/python -m tools.make_nudity_positive [--target 0.8] [--seed 1]

Needs the ``nudity`` extra. Takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from moderation.analyzers import Image
from moderation.nudity import NudityModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "nudity-positive.png"
WIDTH, HEIGHT = 320, 240


def vp8_round_trip(image: Image, bitrate: int = 500_000) -> Image:
    """`image` after one VP8 keyframe encode and decode, as a relayed sample would be."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = image.shape[1], image.shape[0]
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = bitrate
    encoder.time_base = Fraction(1, 30)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = 0
    packets = [*encoder.encode(frame), *encoder.encode(None)]
    decoder = av.CodecContext.create("vp8", "r")
    decoded = [f for p in packets for f in decoder.decode(p)]
    out: Image = decoded[0].to_ndarray(format="rgb24")
    return out


def start(rng: np.random.Generator) -> Image:
    """A smooth skin-toned canvas with a darker background band."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = (70, 60, 55)
    cv2.ellipse(image, (WIDTH // 2, HEIGHT), (WIDTH // 3, HEIGHT), 0, 0, 360, (224, 172, 140), -1)
    return image


def paint(image: Image, rng: np.random.Generator) -> Image:
    """A copy of `image` with one random soft ellipse in a random skin or shadow tone."""
    out = image.copy()
    layer = np.zeros_like(out)
    mask = np.zeros(out.shape[:2], np.uint8)
    centre = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
    axes = (int(rng.integers(4, WIDTH // 4)), int(rng.integers(4, HEIGHT // 4)))
    angle = float(rng.uniform(0, 180))
    tone = rng.uniform(0.3, 1.1) * np.array((230, 175, 145)) + rng.normal(0, 12, 3)
    colour = tuple(int(c) for c in np.clip(tone, 0, 255))
    cv2.ellipse(layer, centre, axes, angle, 0, 360, colour, -1)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
    soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, min(axes) / 3)).astype(np.float32) / 255
    alpha = soft[..., None] * float(rng.uniform(0.4, 1.0))
    blended = out * (1 - alpha) + layer * alpha
    return np.asarray(np.clip(blended, 0, 255), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = NudityModel()
    rng = np.random.default_rng(args.seed)
    best = start(rng)
    best_score = model.score(best)
    for step in range(args.steps):
        candidate = paint(best, rng)
        score = model.score(candidate)
        if score <= best_score:
            continue
        # Keep only what still scores after the codec: the relay's samples are VP8 keyframes.
        relayed = min(score, model.score(vp8_round_trip(candidate)))
        if relayed > best_score:
            best, best_score = candidate, relayed
            print(f"step {step}: {best_score:.3f}", flush=True)
            if best_score >= args.target:
                break
    else:
        raise SystemExit(f"stopped at {best_score:.3f} < {args.target} after {args.steps} steps")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(best, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), score {best_score:.3f}")


if __name__ == "__main__":
    main()
