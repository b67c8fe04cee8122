"""Peak memory of ``detr predict`` / ``detr track`` on videos: does it grow with the clip's length?

Frames are streamed (decoded, predicted a batch at a time, drawn, encoded), so peak memory should
not depend on the number of frames. The script writes synthetic moving-shapes clips of several
lengths (``torchdetr.data.synthetic_video``; 320×240 at 25 frames/s by default), then runs the
command on each in a fresh child process and reads that process's peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``) after it finishes. The baseline is the shortest clip, in
the same run; the table gives each length's peak and its ratio to the baseline. The model is a
tiny random DETR (memory does not depend on its weights); ``--image_size`` is the size it sees.

    python benchmarks/video_memory.py                          # 30, 200 and 2000 frames, predict and track
    python benchmarks/video_memory.py --frames 30 2000 --commands predict --output ''
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import add_output_arguments, output_path, write_results  # noqa: E402  (benchmarks/)

RESULTS = ROOT / "benchmarks" / "results" / "video_memory.md"
TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=64,
            num_queries=10, num_classes=6, backbone_weights="none", image_size=128, dropout=0.0)


def write_checkpoint(path: Path) -> Path:
    import torch

    from torchdetr.config import DETRConfig
    from torchdetr.models.build import build_detector

    torch.manual_seed(0)
    cfg = DETRConfig(**TINY)
    torch.save({"model": build_detector(cfg).state_dict(), "args": argparse.Namespace(**cfg.to_dict())}, path)
    return path


def write_clip(path: Path, num_frames: int, size: tuple[int, int]) -> Path:
    from torchdetr.data.synthetic_video import SyntheticVideo
    from torchdetr.inference.video import write_video

    video = SyntheticVideo(num_frames, seed=0, size=size)
    write_video(path, video.frames(), video.rate)
    return path


def describe() -> str:
    from machine import machine_description  # benchmarks/machine.py (this script's folder is on sys.path)

    return machine_description()


def child(argv: list[str]) -> None:
    """Run one ``detr`` command in this process; print its peak RSS (MiB) and wall time as JSON."""
    from torchdetr.cli import main

    started = time.perf_counter()
    code = main(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"code": code, "peak_mib": peak_kib / 1024, "seconds": time.perf_counter() - started}))


def measure(command: str, clip: Path, checkpoint: Path, image_size: int, out: Path, threads: int) -> dict:
    argv = [command, str(clip), "--model", str(checkpoint), "--output", str(out), "--device", "cpu",
            "--image_size", str(image_size), "--threshold", "0.5"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env, check=False)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"child failed:\n{done.stdout}\n{done.stderr}") from None
    if result["code"] != 0:
        raise RuntimeError(f"detr {command} exited {result['code']}:\n{done.stderr}")
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 200, 2000])
    parser.add_argument("--commands", nargs="+", default=["predict", "track"], choices=["predict", "track"])
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each command (OMP_NUM_THREADS)")
    add_output_arguments(parser, RESULTS)
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        checkpoint = write_checkpoint(tmp_path / "tiny.pth")
        for frames in sorted(args.frames):
            clip = write_clip(tmp_path / f"clip{frames}.mp4", frames, tuple(args.size))
            for command in args.commands:
                result = measure(command, clip, checkpoint, args.image_size, tmp_path / f"out_{command}_{frames}", args.threads)
                rows.append(dict(command=command, frames=frames, **result))
                print(f"{command:8s} {frames:6d} frames: peak {result['peak_mib']:.0f} MiB, {result['seconds']:.0f} s",
                      flush=True)

    lines = [
        "# Peak memory on long videos",
        "",
        "`python benchmarks/video_memory.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {describe()}; the cores shared with other jobs.",
        "",
        f"Synthetic moving-shapes clips {args.size[0]}×{args.size[1]} at 25 frames/s, "
        f"tiny random DETR at image size {args.image_size}, batch 4, CPU, {args.threads} torch thread(s). "
        "Peak resident memory of a fresh "
        "process running the command (`ru_maxrss`), baseline = the shortest clip of the same command in this run.",
        "",
        "| command | frames | peak RSS (MiB) | × baseline | wall time (s) | frames/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(r for r in rows if r["command"] == row["command"])
        ratio = row["peak_mib"] / base["peak_mib"]
        lines.append(f"| detr {row['command']} | {row['frames']} | {row['peak_mib']:.0f} | {ratio:.2f} "
                     f"| {row['seconds']:.0f} | {row['frames'] / row['seconds']:.1f} |")
    write_results(output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
