"""Seconds and peak memory of the DICOM side of volumes: writing a CT series + SEG, reading the series as a
volume, reading the SEG as mask volumes (all segments at once, and one segment at a time).

A synthetic CT (``--slices`` x ``--size`` x ``--size``, int16 HU) with ``--segments`` ellipsoid segments is
written once with ``dicom_io.dicomize_volume.write_volume_study``; each read runs in a fresh child process
so that its peak RSS (``VmHWM``) is its own. Writes JSON with the command that made it.

    .venv/bin/python benchmarks/volume_io.py --slices 100 --size 512 --segments 10 \\
        --out benchmarks/results/volume_io.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _case(slices: int, size: int, segments: int, seed: int = 0):
    from dicom_io.geometry import Geometry

    rng = np.random.default_rng(seed)
    image = rng.normal(40, 30, (slices, size, size)).astype(np.int16)
    zz, yy, xx = np.ogrid[:slices, :size, :size]
    masks = {}
    for k in range(segments):
        c = rng.uniform(0.2, 0.8, 3) * (slices, size, size)
        r = rng.uniform(0.05, 0.15, 3) * (slices, size, size)
        masks[f"organ{k + 1}"] = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    geometry = Geometry.from_components(image.shape, (1.5, 0.8, 0.8), (-200.0, -200.0, 100.0))
    return image, geometry, masks


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, folder: str) -> dict:
    """One read, in this (fresh) process: seconds and what was read."""
    import pydicom

    from dicom_io.annotations.seg_volume import read_seg_volumes
    from dicom_io.vocabulary import Vocabulary
    from dicom_io.volumes import read_series_volumes, series_volume

    baseline = _peak_rss_mb()  # the imports
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "series":
        (vol,), issues = read_series_volumes(Path(folder))
        out = {"shape": list(vol.shape), "issues": len(issues)}
    else:
        files = sorted(Path(folder).rglob("IMG_*.dcm"))
        vol, _ = series_volume([pydicom.dcmread(f, stop_before_pixels=True) for f in files], load_pixels=False)
        assert vol is not None
        seg = pydicom.dcmread(next(Path(folder).rglob("SEG_*.dcm")))
        names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
        vocab = Vocabulary.from_class_names(names)
        t0 = time.perf_counter()
        if kind == "seg_all":
            masks, issues = read_seg_volumes(seg, vol, vocab)
            out = {"segments": len(masks), "voxels": sum(m.voxels for m in masks), "issues": len(issues)}
        else:
            n, voxels = 0, 0
            for number in range(1, len(names) + 1):
                masks, _ = read_seg_volumes(seg, vol, vocab, segment_numbers=[number])
                n += len(masks)
                voxels += sum(m.voxels for m in masks)
            out = {"segments": n, "voxels": voxels}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["rss_after_imports_mb"] = round(baseline, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume_io.json")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    from dicom_io.dicomize_volume import write_volume_study

    image, geometry, masks = _case(args.slices, args.size, args.segments)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        study = write_volume_study(image, geometry, masks, Path(tmp), dataset_name="bench", case_key="case")
        write_s = time.perf_counter() - t0
        assert study.seg_path is not None
        runs: dict[str, list[dict]] = {"series": [], "seg_all": [], "seg_one_at_a_time": []}
        for _ in range(args.rounds):
            for kind in runs:
                r = subprocess.run([sys.executable, __file__, "--child", kind, tmp], capture_output=True, text=True,
                                   check=True, cwd=ROOT)
                runs[kind].append(json.loads(r.stdout.strip().splitlines()[-1]))
        seg_mb = study.seg_path.stat().st_size / 2**20
        series_mb = sum(p.stat().st_size for p in study.image_paths) / 2**20
    doc = {
        "command": "python benchmarks/volume_io.py " + shlex.join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "volume": {"slices": args.slices, "rows": args.size, "columns": args.size, "segments": args.segments,
                   "series_mb": round(series_mb, 1), "seg_mb": round(seg_mb, 1),
                   "mask_volume_mb": round(args.slices * args.size * args.size / 2**20, 1)},
        "write_seconds": round(write_s, 2),
        "median": {k: {m: float(np.median([r[m] for r in v])) for m in ("seconds", "peak_rss_mb",
                                                                          "rss_after_imports_mb")}
                   for k, v in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["median"], indent=2), f"write {write_s:.1f} s", sep="\n")


if __name__ == "__main__":
    main()
