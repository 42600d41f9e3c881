"""Memory and time of a 3-D audit of a CT-sized volume: 512 x 512 x 300 voxels, 20 segments, three members.

What a full-volume approach would hold: three members x 20 segments x 78.6 M voxels of float32
probabilities = 18.9 GB. labelqa stores each member's probabilities per segment, as uint8, in the box
where the member sees the segment (``models.volume.probs``), fills that storage slab by slab from
sliding-window inference, and scores one segment at a time in its box (``models.volume.detector``).

Two measurements, each in its own process (peak RSS is per process):

- ``--stage score``: the members' probabilities made from the truth (per slab: the segment's mask,
  blurred in-plane, thinned differently per member) go through the same slab-by-slab storage, then
  every (segment) unit is scored with a planted error in five segments; no network, so it runs on
  any CPU in minutes;
- ``--stage infer``: one untrained ``unet3d-tiny`` (20 outputs) runs sliding-window inference over the
  whole volume into the same storage: the inference side's memory and seconds per member and fold.

Writes ``benchmarks/results/volume_memory.json`` (both stages, with the command).
    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/volume_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (300, 512, 512)
K = 20
M = 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_labels(seed: int = 0) -> np.ndarray:
    """20 ellipsoid segments of organ-like sizes (a few large, most small) in a 300 x 512 x 512 label map."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint8)
    for c in range(1, K + 1):
        big = c <= 3
        r = np.array([rng.uniform(25, 45), rng.uniform(50, 90), rng.uniform(50, 90)]) if big else \
            np.array([rng.uniform(5, 15), rng.uniform(8, 30), rng.uniform(8, 30)])
        ctr = np.array([rng.uniform(r[0], SHAPE[0] - r[0]), rng.uniform(r[1], SHAPE[1] - r[1]),
                        rng.uniform(r[2], SHAPE[2] - r[2])])
        lo = np.maximum(0, np.floor(ctr - r)).astype(int)
        hi = np.minimum(SHAPE, np.ceil(ctr + r) + 1).astype(int)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        e = ((zz - ctr[0]) / r[0]) ** 2 + ((yy - ctr[1]) / r[1]) ** 2 + ((xx - ctr[2]) / r[2]) ** 2 <= 1
        sub = lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        sub[e & (sub == 0)] = c
    return lab


def stage_score() -> dict:
    from scipy.ndimage import uniform_filter

    from models.volume.corruption import corrupt_binary
    from models.volume.data import Geometry
    from models.volume.detector import score_volumes
    from models.volume.probs import SparseBuilder, bounding_box, merge_members
    from models.volume.train import VolumeTrainConfig, _slab_depth

    t0 = time.perf_counter()
    lab = make_labels()
    geo = Geometry((1.0, 0.7, 0.7))
    depth = _slab_depth(SHAPE, K, VolumeTrainConfig())
    parts = []
    for j in range(M):
        b = SparseBuilder(SHAPE, K)
        for z in range(0, SHAPE[0], depth):
            sl = lab[z:z + depth]
            block = np.zeros((K,) + sl.shape, np.float32)
            for c in range(K):
                m = sl == c + 1
                if m.any():
                    block[c] = uniform_filter(m.astype(np.float32), size=(1, 3 + 2 * j, 3 + 2 * j))
            b.add(z, block)
            del block
        parts.append(b.build())
    probs = merge_members(parts)
    del parts
    t_store = time.perf_counter() - t0
    stored_mb = probs.nbytes / 2**20
    rss_store = _rss_mb()
    given = lab.copy()  # a planted error in five segments, made in each segment's box (grown by 12 voxels)
    rng = np.random.default_rng(1)
    for c, op in ((4, "drop_component"), (5, "drop_slices"), (6, "erode"), (7, "extra_slices"), (8, "shift")):
        box = bounding_box(given == c)
        assert box is not None
        sl = tuple(slice(max(0, box[a] - 12), min(SHAPE[a], box[a + 3] + 12)) for a in range(3))
        sub = given[sl]
        new = corrupt_binary(sub == c, op, rng, geo.spacing, free=(sub == 0))
        assert new is not None
        sub[(sub == c) & ~new] = 0
        sub[new & (sub == 0)] = c
    t1 = time.perf_counter()
    sc = score_volumes([probs], [given], [geo], keep_arrays=False)
    t_score = time.perf_counter() - t1
    planted = {4: "drop_component", 5: "drop_slices", 6: "erode", 7: "extra_slices", 8: "shift"}
    # one case cannot teach the cut or the Dice predictor (one unit per class, no clean pool): a real audit
    # takes the bundle's. What the detector sees in the planted segments against the others:
    rows = [{"segment": v.class_index, "planted": planted.get(v.class_index),
             "dice_consensus": round(v.dice_consensus, 3), "regions": sorted({str(r.kind) for r in v.regions}),
             "hd95_consensus_mm": round(v.hd95_consensus, 2)} for v in sc.verdicts]
    return {"stage": "score", "shape": list(SHAPE), "segments": K, "members": M,
            "full_float32_probabilities_gb": round(M * K * float(np.prod(SHAPE)) * 4 / 2**30, 2),
            "stored_probabilities_mb": round(stored_mb, 1), "slab_depth": depth,
            "seconds_store": round(t_store, 1), "seconds_score": round(t_score, 1),
            "seconds_score_per_segment": round(t_score / K, 2),
            "peak_rss_mb_after_store": round(rss_store, 1), "peak_rss_mb": round(_rss_mb(), 1),
            "segments_scored": rows}


def stage_infer() -> dict:
    import torch

    from models.volume.ensemble import build_volume_segmenter
    from models.volume.preprocess import normalise_intensity
    from models.volume.train import VolumeTrainConfig, predict_volume

    lab = make_labels()
    noise = np.random.default_rng(1).normal(0, 20, SHAPE).astype(np.float32)
    img = normalise_intensity(lab.astype(np.float32) * 40 + noise)
    del lab, noise
    rss0 = _rss_mb()
    net = build_volume_segmenter("unet3d-tiny", K).eval()
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)
            and m.out_channels == K][-1]
    torch.nn.init.constant_(head.bias, -8.0)  # untrained: sees nothing, so the storage is measured by --stage score
    t0 = time.perf_counter()
    cp = predict_volume([net], img, K, VolumeTrainConfig())
    t = time.perf_counter() - t0
    return {"stage": "infer", "shape": list(SHAPE), "segments": K,
            "member": "unet3d-tiny, untrained (output bias -8): seconds and inference memory only",
            "seconds_per_member_and_fold": round(t, 1), "stored_probabilities_mb": round(cp.nbytes / 2**20, 1),
            "peak_rss_mb_before_inference": round(rss0, 1), "peak_rss_mb": round(_rss_mb(), 1),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["score", "infer", "both"], default="both")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "volume_memory.json")
    ap.add_argument("--update", action="store_true", help="re-run --stage STAGE into the existing --out file")
    a = ap.parse_args(argv)
    if a.stage != "both" and not a.update:
        print(json.dumps(stage_score() if a.stage == "score" else stage_infer()))
        return 0
    out = {"command": "PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/volume_memory.py", "stages": []}
    if a.update:
        out = json.loads(a.out.read_text())
        out.setdefault("updated", []).append(f"--stage {a.stage} --update")
    for st in ("score", "infer") if a.stage == "both" else (a.stage,):
        p = subprocess.run([sys.executable, __file__, "--stage", st], capture_output=True, text=True, check=True)
        row = json.loads(p.stdout.strip().splitlines()[-1])
        out["stages"] = [r for r in out["stages"] if r["stage"] != st] + [row]
        print(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
