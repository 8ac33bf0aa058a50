#!/usr/bin/env python3
"""Benchmark: camera-sized JPEGs to a 240 px thumbnail and a 1024 px preview.

The `subdefs` task itself (a real databox, one `run_once` over the whole batch,
records updated in SQLite) against ImageMagick on the very same files in the same
run, with the same number of workers (default: one per CPU):

- `convert SRC -thumbnail 1024x1024 -write P -thumbnail 240x240 T`, one decode per
  image, which is how the issue states the baseline;
- the same with `-define jpeg:size=WxH`, ImageMagick's own reduced-decode hint,
  set to the preview's size so libjpeg decodes at the same 1/n scale as Pillow's
  draft mode does for us: the strongest ImageMagick baseline;
- `vipsthumbnail` (two runs per image) when it is installed.

Sources: `--distinct` different synthetic photos (gradients plus sensor-like
noise, ~4.5 MB each at 6000x4000), hard-linked up to `--count` names, so every
tool reads the same bytes from the page cache.

    .venv/bin/python bench/bench_subdefs.py            # 500 images
    .venv/bin/python bench/bench_subdefs.py --count 40 --rounds 3  # quicker, steadier
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from PIL import Image  # noqa: E402

from schedulerd.context import TaskContext  # noqa: E402
from repository import DataboxSettings, NewRecord, SubdefSettings, open_databox  # noqa: E402
from tasks.subdefs import Settings, SubdefsTask  # noqa: E402

QUALITY = 85


def camera_jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A photo-like JPEG: smooth gradients plus per-channel noise, quality 90."""
    w, h = size
    channels = []
    for i in range(3):
        gradient = Image.linear_gradient("L").resize((w, h)).rotate(90 * ((seed + i) % 4))
        noise = Image.effect_noise((w, h), 12 + 4 * i + seed % 5).convert("L")
        channels.append(Image.blend(gradient, noise, 0.35))
    Image.merge("RGB", channels).save(path, "JPEG", quality=90)
    return path


def make_sources(folder: Path, count: int, distinct: int, size: tuple[int, int], workers: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        bases = list(pool.map(camera_jpeg, [folder / f"base{i}.jpg" for i in range(distinct)],
                              [size] * distinct, range(distinct)))
    out = []
    for i in range(count):
        p = folder / f"photo{i:04d}.jpg"
        os.link(bases[i % distinct], p)
        out.append(p)
    return out


def run_task(work: Path, sources: list[Path], workers: int) -> float:
    """The real task over a real databox; returns seconds for the whole batch."""
    storage = work / "storage"
    (storage / "docs").mkdir(parents=True)
    box = DataboxSettings(work / "bench.sqlite", storage, subdefs=types.MappingProxyType({
        "thumbnail": SubdefSettings(media_class="image", size=240, format="jpeg", quality=QUALITY),
        "preview": SubdefSettings(media_class="image", size=1024, format="jpeg", quality=QUALITY),
    }))
    db = open_databox(box)
    coll = db.create_collection("bench")
    rows = []
    for i, src in enumerate(sources):
        rel = f"docs/{src.name}"
        os.link(src, storage / rel)
        rows.append(NewRecord(coll.id, src.name, rel, src.stat().st_size, f"{i:064x}", "image/jpeg"))
    db.insert_ingested(rows)
    db.close()
    config = types.SimpleNamespace(databoxes={"bench": box}, tasks={})
    task = SubdefsTask(Settings(databox="bench", batch=len(sources), workers=workers))
    ctx = TaskContext.for_test("bench", task.settings, config=config, tmp_path=work)
    started = time.perf_counter()
    summary = anyio.run(task.run_once, ctx)
    elapsed = time.perf_counter() - started
    expected = f"{len(sources)} records: {2 * len(sources)} sub-definitions built"
    if summary != expected:
        raise SystemExit(f"task did not build everything: {summary!r}")
    return elapsed


def run_commands(commands: list[list[str]], workers: int, env: dict[str, str]) -> float:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for result in pool.map(lambda c: subprocess.run(c, capture_output=True, env=env, timeout=600), commands):
            if result.returncode != 0:
                raise SystemExit(f"{commands[0][0]} failed: {result.stderr.decode(errors='replace')[:500]}")
    return time.perf_counter() - started


def convert_binary() -> str | None:
    for name in ("/usr/bin/convert", "/usr/bin/magick"):  # the real ImageMagick, not a wrapper on PATH
        if os.access(name, os.X_OK):
            return name
    return shutil.which("magick") or shutil.which("convert")


def imagemagick(out: Path, sources: list[Path], workers: int, hint: bool) -> float:
    binary = convert_binary()
    assert binary is not None
    out.mkdir(parents=True)
    with Image.open(sources[0]) as im:
        w, h = im.size
    scale = 1024 / max(w, h)
    define = ["-define", f"jpeg:size={math.ceil(w * scale)}x{math.ceil(h * scale)}"] if hint else []
    commands = [[binary, *define, str(s), "-quality", str(QUALITY), "-thumbnail", "1024x1024",
                 "-write", str(out / f"{s.stem}-p.jpg"), "-thumbnail", "240x240", str(out / f"{s.stem}-t.jpg")]
                for s in sources]
    # one process per image on every worker: OpenMP inside each one would only oversubscribe the cores
    env = {**os.environ, "MAGICK_THREAD_LIMIT": "1", "OMP_NUM_THREADS": "1"}
    return run_commands(commands, workers, env)


def vips(out: Path, sources: list[Path], workers: int) -> float | None:
    binary = shutil.which("vipsthumbnail")
    if binary is None:
        return None
    out.mkdir(parents=True)
    commands = []
    for s in sources:
        for size, tag in ((1024, "p"), (240, "t")):
            commands.append([binary, str(s), "--size", str(size), "-o", f"{out}/%s-{tag}.jpg[Q={QUALITY}]"])
    return run_commands(commands, workers, dict(os.environ))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="images (default 500)")
    parser.add_argument("--distinct", type=int, default=8, help="different source photos (default 8)")
    parser.add_argument("--size", default="6000x4000", help="source size WxH (default 6000x4000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel workers for every tool")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every tool this many times, interleaved, and keep each one's best (default 1)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    logging.basicConfig(level=logging.WARNING)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-subdefs-"))
    try:
        t0 = time.perf_counter()
        sources = make_sources(work / "src", args.count, min(args.distinct, args.count), (w, h), args.workers)
        print(f"{args.count} sources of {w}x{h} ready in {time.perf_counter() - t0:.1f}s "
              f"({sources[0].stat().st_size / 1e6:.1f} MB each); {args.workers} workers, {os.cpu_count()} CPUs",
              file=sys.stderr)
        runs: dict[str, list[float]] = {}
        for r in range(args.rounds):  # interleaved, so a busy spell on the host hits every tool alike
            rd = work / f"round{r}"
            timings = {"schedulerd": run_task(rd / "task", sources, args.workers)}
            if convert_binary():
                timings["imagemagick"] = imagemagick(rd / "im", sources, args.workers, hint=False)
                timings["imagemagick_jpeg_size_hint"] = imagemagick(rd / "im-hint", sources, args.workers, hint=True)
            timings["vipsthumbnail"] = vips(rd / "vips", sources, args.workers)
            for k, v in timings.items():
                if v:
                    runs.setdefault(k, []).append(v)
            shutil.rmtree(rd, ignore_errors=True)
        results = {k: min(v) for k, v in runs.items()}
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    rates = {k: args.count / v for k, v in results.items()}
    ours = rates["schedulerd"]
    report = {
        "images": args.count, "size": f"{w}x{h}", "workers": args.workers, "cpus": os.cpu_count(),
        "rounds": args.rounds, "load_average": os.getloadavg()[0],
        "seconds": {k: round(v, 3) for k, v in results.items()},
        "images_per_second": {k: round(v, 2) for k, v in rates.items()},
        "ratio_vs": {k: round(ours / v, 2) for k, v in rates.items() if k != "schedulerd"},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, rate in rates.items():
            ratio = "" if name == "schedulerd" else f"   schedulerd is {ours / rate:.2f}x"
            print(f"{name:28s} {rate:8.2f} images/s  ({results[name]:.2f}s){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
