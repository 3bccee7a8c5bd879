"""Plot training and validation loss curves of fairseq runs from their tensorboard logs (``--tensorboard-logdir``).

fairseq writes one event folder per logging tag under the log dir: ``train_inner`` (every ``--log-interval``
updates), ``train`` (epoch averages) and one per validation subset (e.g. ``dev``). This script reads the ``loss``
scalar (base-2 label-smoothed loss, as fairseq logs it) of the training tag and of the validation tag of every run
and draws two panels (train, valid), x = number of updates, one line per run.

Example: ``python -m scripts.plot_curves --run fp=ckpt/st/tensorboard --run svcd=ckpt/svcd/tensorboard --out c.png``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

TRAIN_TAGS = ("train_inner", "train")


def read_scalar(folder: Path, tag: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one scalar in the event files of ``folder``; empty when absent."""
    if not folder.is_dir():
        return []
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    points = {e.step: e.value for e in acc.Scalars(tag)}  # a restarted run may rewrite steps: keep the last value
    return sorted(points.items())


def run_curves(logdir: Path, valid_subset: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """{"train": points, "valid": points} for one fairseq tensorboard log dir."""
    if not logdir.is_dir():
        raise FileNotFoundError(f"tensorboard log dir not found: {logdir}")
    train: list[tuple[int, float]] = []
    for tag in TRAIN_TAGS:
        train = read_scalar(logdir / tag)
        if train:
            break
    subsets = [valid_subset] if valid_subset else sorted(
        p.name for p in logdir.iterdir() if p.is_dir() and p.name not in TRAIN_TAGS
    )
    valid: list[tuple[int, float]] = []
    for name in subsets:
        valid = read_scalar(logdir / name)
        if valid:
            break
    return {"train": train, "valid": valid}


def plot(runs: dict[str, dict[str, list[tuple[int, float]]]], out: Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, part in zip(axes, ("train", "valid")):
        for name, curves in runs.items():
            points = curves[part]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
        ax.set_title(f"{part} loss")
        ax.set_xlabel("updates")
        ax.set_ylabel("loss (label-smoothed, bits/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_run(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--run expects NAME=LOGDIR, got {spec!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", type=parse_run, required=True, help="NAME=TENSORBOARD_LOGDIR (repeat)")
    ap.add_argument("--out", type=Path, required=True, help="output image (PNG)")
    ap.add_argument("--valid-subset", default=None, help="validation tag to read (default: the first one found)")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    try:
        runs = {name: run_curves(path, args.valid_subset) for name, path in args.run}
    except FileNotFoundError as err:
        print(f"error: [plot_curves] {err}", file=sys.stderr)
        return 2
    empty = [name for name, c in runs.items() if not c["train"] and not c["valid"]]
    if empty:
        print(f"error: [plot_curves] no loss scalars in the logs of: {', '.join(empty)}", file=sys.stderr)
        return 2
    plot(runs, args.out, args.title)
    for name, c in runs.items():
        print(f"[plot_curves] {name}: {len(c['train'])} train / {len(c['valid'])} valid points")
    print(f"[plot_curves] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
