"""Make ``docs/images/track.gif``: ``detr track`` on a synthetic moving-shapes clip, every second frame.

The clip is ``SyntheticVideo(FRAMES, seed=SEED, size=SIZE)`` written as MP4; ``detr track`` runs on it
with the given checkpoint (by default the tiling benchmark's model, ``outputs/tiling_model``, trained on
64-px synthetic shapes); the output video's frames are decoded and every ``STEP``-th one is written into
a looping GIF at the clip's speed. The first JSON lines are printed (docs/video.md shows them).

    python scripts/track_gif.py --checkpoint outputs/tiling_model/checkpoint.pth
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAMES = 48
SEED = 4
SIZE = (160, 120)  # (W, H): a small GIF
STEP = 2  # every second frame
GIF = ROOT / "docs" / "images" / "track.gif"


def main() -> None:
    import av
    from PIL import Image

    from torchdetr.cli import main as detr
    from torchdetr.data.synthetic_video import SyntheticVideo
    from torchdetr.inference.video import write_video

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "outputs" / "tiling_model" / "checkpoint.pth")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--planted", action="store_true",
                        help="use the tests' stand-in detector (tests/planted.py: finds bright shapes) instead of a model")
    parser.add_argument("--output", type=Path, default=GIF)
    args = parser.parse_args()
    if args.planted:
        import torchdetr.cli.track as track_cli
        from tests.planted import BrightBlobModel
        from torchdetr import Detector

        planted = Detector(BrightBlobModel(level=160), {1: "shape"}, threshold=0.5, image_size=SIZE[1], max_size=SIZE[0])
        track_cli._load_detector = lambda _args: planted

    video = SyntheticVideo(FRAMES, seed=SEED, size=SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        clip, out = Path(tmp) / "shapes.mp4", Path(tmp) / "out"
        write_video(clip, video.frames(), video.rate)
        code = detr(["track", str(clip), "--model", str(args.checkpoint), "--output", str(out),
                     "--threshold", str(args.threshold), "--device", "cpu"])
        if code != 0:
            raise SystemExit(code)
        with av.open(str(out / "shapes.mp4")) as container:
            frames = [frame.to_image() for k, frame in enumerate(container.decode(video=0)) if k % STEP == 0]
        print("\n".join((out / "shapes.jsonl").read_text().splitlines()[:3]))
    palette = [frame.convert("P", palette=Image.Palette.ADAPTIVE, colors=32) for frame in frames]
    palette[0].save(args.output, save_all=True, append_images=palette[1:], loop=0, optimize=True,
                    duration=round(1000 * STEP / video.rate))
    print(f"{args.output}: {len(frames)} frames, {args.output.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
