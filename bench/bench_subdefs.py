#!/usr/bin/env python3
"""Benchmark: camera-sized JPEGs to a 240 px thumbnail and a 1024 px preview.

The `subdefs` task itself (a real databox, one `run_once` over the whole batch,
records updated in SQLite) against ImageMagick on the very same files, with the same
number of workers (default: one per CPU), in rounds A B A B (paired ratio per round):
`convert -define jpeg:size=WxH SRC -thumbnail 1024x1024 -write P -thumbnail 240x240 T`,
one decode per image, `jpeg:size` set to the preview's size so libjpeg decodes at the
same 1/n scale as Pillow's draft mode does for us: the fair peer. The bench refuses to
run without ImageMagick's `convert` (`convert -version`; Debian: `apt-get install imagemagick`).

Sources: `--distinct` different synthetic photos (gradients plus sensor-like
noise, ~4.5 MB each at 6000x4000), hard-linked up to `--count` names, so every
tool reads the same bytes from the page cache.

    .venv/bin/python bench/bench_subdefs.py            # 500 images, 3 rounds
    .venv/bin/python bench/bench_subdefs.py --count 40 --rounds 3  # quicker
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

from repository import DataboxSettings, NewRecord, SubdefSettings, open_databox  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from tasks.subdefs import Settings, SubdefsTask  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _common import alternate, machine, print_sides, report_paired, require_imagemagick  # noqa: E402

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


def imagemagick(binary: str, out: Path, sources: list[Path], workers: int) -> float:
    out.mkdir(parents=True)
    with Image.open(sources[0]) as im:
        w, h = im.size
    scale = 1024 / max(w, h)
    define = ["-define", f"jpeg:size={math.ceil(w * scale)}x{math.ceil(h * scale)}"]
    commands = [[binary, *define, str(s), "-quality", str(QUALITY), "-thumbnail", "1024x1024",
                 "-write", str(out / f"{s.stem}-p.jpg"), "-thumbnail", "240x240", str(out / f"{s.stem}-t.jpg")]
                for s in sources]
    # one process per image on every worker: OpenMP inside each one would only oversubscribe the cores
    env = {**os.environ, "MAGICK_THREAD_LIMIT": "1", "OMP_NUM_THREADS": "1"}
    return run_commands(commands, workers, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="images (default 500)")
    parser.add_argument("--distinct", type=int, default=8, help="different source photos (default 8)")
    parser.add_argument("--size", default="6000x4000", help="source size WxH (default 6000x4000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel workers for each side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each ours then ImageMagick (default 3)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    binary = require_imagemagick()
    w, h = (int(v) for v in args.size.lower().split("x"))
    logging.basicConfig(level=logging.WARNING)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-subdefs-"))
    print(f"# bench_subdefs  {machine()}")
    print_sides("a databox: each record read from SQLite, EXIF orientation applied, both files written to a temp "
                "name and renamed, the records updated in SQLite", "plain writes of the two files",
                f"ImageMagick ({binary} -define jpeg:size=... -thumbnail)")
    try:
        t0 = time.perf_counter()
        sources = make_sources(work / "src", args.count, min(args.distinct, args.count), (w, h), args.workers)
        print(f"{args.count} sources of {w}x{h} ready in {time.perf_counter() - t0:.1f}s "
              f"({sources[0].stat().st_size / 1e6:.1f} MB each); {args.workers} workers, {os.cpu_count()} CPUs",
              file=sys.stderr)
        n = iter(range(10**6))

        def ours() -> float:
            rd = work / f"ours{next(n)}"
            try:
                return run_task(rd, sources, args.workers)
            finally:
                shutil.rmtree(rd, ignore_errors=True)

        def peer() -> float:
            rd = work / f"im{next(n)}"
            try:
                return imagemagick(binary, rd, sources, args.workers)
            finally:
                shutil.rmtree(rd, ignore_errors=True)

        ours_s, peer_s = alternate(args.rounds, ours, peer)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    ours_rate = [args.count / s for s in ours_s]
    peer_rate = [args.count / s for s in peer_s]
    for i, (o, p) in enumerate(zip(ours_rate, peer_rate, strict=True)):
        print(f"round {i + 1}: schedulerd {o:7.2f} images/s   ImageMagick (jpeg:size) {p:7.2f} images/s")
    med = report_paired("images/s (ours / ImageMagick jpeg:size)", ours_rate, peer_rate, ">= 1.0x", lambda m: m >= 1.0)
    if args.json:
        print(json.dumps({"images": args.count, "size": f"{w}x{h}", "workers": args.workers, "rounds": args.rounds,
                          "load_average": os.getloadavg()[0], "ours_seconds": ours_s, "imagemagick_seconds": peer_s,
                          "paired_ratio_median": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
