#!/usr/bin/env python3
"""Benchmark: writing metadata into 1,000 files, stay-open exiftool vs one exiftool per file.

Both write the same two tags (a title and the record id as XMP-dc:Identifier)
into small JPEGs, one file per request, one after the other:

- `stay_open`: the `write_metadata` task's client (`tasks.media.exiftool.ExifTool`),
  one child for the whole batch, each write checked for a left-over temporary;
- `per_file`: `exiftool -overwrite_original -TAG=... FILE` started once per file.

    .venv/bin/python bench/bench_exiftool.py              # 1000 files
    .venv/bin/python bench/bench_exiftool.py --count 100  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.media.exiftool import ExifTool  # noqa: E402


def make_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "sample.jpg"
    Image.linear_gradient("L").resize((320, 240)).convert("RGB").save(sample, "JPEG", quality=85)
    data = sample.read_bytes()
    files = []
    for i in range(count):
        p = folder / f"f{i:05d}.jpg"
        p.write_bytes(data)
        files.append(p)
    return files


async def stay_open(files: list[Path]) -> float:
    started = time.perf_counter()
    async with ExifTool(timeout=60) as et:
        for i, f in enumerate(files):
            await et.write_tags(f, {"XMP-dc:Title": f"Title {i}", "XMP-dc:Identifier": str(i)})
    return time.perf_counter() - started


def per_file(files: list[Path]) -> float:
    started = time.perf_counter()
    for i, f in enumerate(files):
        subprocess.run(["exiftool", "-overwrite_original", "-m", f"-XMP-dc:Title=Title {i}",
                        f"-XMP-dc:Identifier={i}", str(f)], check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def check(files: list[Path]) -> None:
    """Every file holds its own id (read by one exiftool over all of them)."""
    out = subprocess.run(["exiftool", "-json", "-XMP-dc:Identifier", *map(str, files)],
                         check=True, capture_output=True, timeout=600).stdout
    got = {Path(d["SourceFile"]).name: str(d.get("Identifier")) for d in json.loads(out)}
    bad = [f.name for i, f in enumerate(files) if got.get(f.name) != str(i)]
    if bad:
        raise SystemExit(f"{len(bad)} files do not hold their id, e.g. {bad[:3]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="files (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if shutil.which("exiftool") is None:
        raise SystemExit("exiftool is not installed (Debian package libimage-exiftool-perl)")
    work = Path(tempfile.mkdtemp(prefix="bench-exiftool-"))
    try:
        a = make_files(work / "stay_open", args.count)
        b = make_files(work / "per_file", args.count)
        t_stay = anyio.run(stay_open, a)
        t_each = per_file(b)
        check(a)
        check(b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "files": args.count, "load_average": os.getloadavg()[0],
        "seconds": {"stay_open": round(t_stay, 3), "per_file": round(t_each, 3)},
        "files_per_second": {"stay_open": round(args.count / t_stay, 1), "per_file": round(args.count / t_each, 1)},
        "ratio": round(t_each / t_stay, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"stay_open  {args.count / t_stay:8.1f} files/s  ({t_stay:.2f}s)")
        print(f"per_file   {args.count / t_each:8.1f} files/s  ({t_each:.2f}s)")
        print(f"stay-open batch is {t_each / t_stay:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
