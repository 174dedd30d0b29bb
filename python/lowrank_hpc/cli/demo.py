"""``lowrank-hpc demo``: complete a photograph from a seeded 30% of its pixels.

The image is ``lowrank_hpc.datasets.load_camera()`` (a grayscale photograph in [0, 1] shipped
with the package); a photograph is approximately low rank, so the default MatrixCompletion fills
the hidden 70% far better than the mean of the shown pixels. The picture (observed with hidden
pixels black | completed | truth) is drawn by matplotlib when it is installed, else written as
an 8-bit grayscale PNG by :func:`write_png` (numpy and zlib only).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import time
import zlib
from typing import Any

import numpy as np

from .complete import _progress_bar, check_rank, check_rank_fits, check_writable, fit
from .report import json_safe, rmse


def load_image() -> tuple[np.ndarray, str]:
    """(the demo image, its name): the shipped photograph, or a synthetic scene if the package
    has no datasets module (a checkout without the data)."""
    try:
        from ..datasets import load_camera
    except ImportError:
        return synthetic_image(), "synthetic scene (lowrank_hpc.datasets is not available)"
    return np.asarray(load_camera(), dtype=np.float64), "camera photograph"


def synthetic_image(n: int = 256) -> np.ndarray:
    """A deterministic (n, n) image in [0, 1]: sky gradient, hills, a sun and a house."""
    y, x = np.mgrid[0:n, 0:n] / (n - 1)
    image = 0.75 - 0.35 * y
    hills = 0.62 + 0.08 * np.sin(6 * x) + 0.04 * np.cos(15 * x)
    image = np.where(y > hills, 0.3 + 0.25 * (y - hills), image)
    image = np.where((x - 0.78) ** 2 + (y - 0.2) ** 2 < 0.01, 0.97, image)
    house = (x > 0.2) & (x < 0.42) & (y > 0.5) & (y < 0.8)
    image = np.where(house, 0.15, image)
    image = np.where(house & (x > 0.28) & (x < 0.34) & (y > 0.62), 0.55, image)
    return np.clip(image, 0, 1)


def run(args: argparse.Namespace) -> int:
    from ..estimators import MatrixCompletion

    picture = None if args.no_picture else args.picture
    if picture:
        check_writable(picture, "--picture")
    truth, name = load_image()
    n1, n2 = truth.shape
    rng = np.random.default_rng(args.seed)
    shown = rng.random(truth.shape) < args.observed
    rows, cols = (a.astype(np.int64) for a in np.nonzero(shown))
    params: dict[str, Any] = {"random_state": args.seed}
    if args.rank is not None:
        params["rank"] = args.rank
    if args.method is not None:
        params["method"] = args.method
    estimator = MatrixCompletion(verbose=_progress_bar(), **params)
    check_rank(estimator)
    check_rank_fits(estimator, truth.shape, f"the {n1} x {n2} pixels of the {name}")
    started = time.perf_counter()
    fit(estimator, rows, cols, truth[shown], truth.shape)
    seconds = time.perf_counter() - started
    completed = np.asarray(estimator.predict(*(a.reshape(-1).astype(np.int64) for a in np.indices(truth.shape))),
                           dtype=np.float64).reshape(truth.shape)
    hidden = ~shown
    result = estimator.result_
    report = {"image": name, "shape": [n1, n2], "observed_fraction": args.observed,
              "observed_pixels": int(shown.sum()), "method": estimator.method_, "rank": int(estimator.U_.shape[1]),
              "backend": result.backend, "iterations": int(estimator.n_iter_), "stop_reason": result.stop_reason,
              "seconds": round(seconds, 3),
              "rmse_hidden": rmse(completed[hidden], truth[hidden]),
              "rmse_mean_predictor": rmse(np.full(int(hidden.sum()), truth[shown].mean()), truth[hidden]),
              "picture": picture}
    if picture:
        observed = np.where(shown, truth, 0.0)
        report["picture_writer"] = save_picture(picture, [observed, np.clip(completed, 0, 1), truth],
                                                ["observed", "completed", "truth"])
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        print(_table(report))
    return 0


def _table(report: dict[str, Any]) -> str:
    n1, n2 = report["shape"]
    header = ("method", "backend", "iterations", "time", "RMSE hidden", "RMSE mean predictor")
    row = (report["method"], report["backend"], str(report["iterations"]), f"{report['seconds']:.2f} s",
           f"{report['rmse_hidden']:.4f}", f"{report['rmse_mean_predictor']:.4f}")
    widths = [max(len(a), len(b)) for a, b in zip(header, row)]
    lines = [f"lowrank-hpc demo: a {n1} x {n2} {report['image']}, {report['observed_fraction']:.0%} of its pixels "
             f"shown, rank {report['rank']}",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join(v.ljust(w) for v, w in zip(row, widths))]
    if report["picture"]:
        lines.append(f"picture: {report['picture']} (observed | completed | truth)")
    return "\n".join(lines)


def save_picture(path: str, panels: list[np.ndarray], titles: list[str]) -> str:
    """Write the panels side by side to ``path`` as PNG; returns "matplotlib" or "png" (the writer used)."""
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
        for axis, panel, title in zip(axes, panels, titles):
            axis.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(title)
            axis.axis("off")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return "matplotlib"
    gap = np.ones((panels[0].shape[0], 4))
    strip = np.hstack([part for panel in panels for part in (panel, gap)][:-1])
    write_png(path, np.round(np.clip(strip, 0, 1) * 255).astype(np.uint8))
    return "png"


def write_png(path: str, pixels: np.ndarray) -> None:
    """Write an (h, w) uint8 array as an 8-bit grayscale PNG (no filtering, zlib-compressed)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    scanlines = np.hstack([np.zeros((height, 1), dtype=np.uint8), pixels]).tobytes()  # filter byte 0 per row
    with open(path, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n")
        stream.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        stream.write(chunk(b"IDAT", zlib.compress(scanlines, 6)))
        stream.write(chunk(b"IEND", b""))
