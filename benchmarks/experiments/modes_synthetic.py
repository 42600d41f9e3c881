"""Crossfit vs insample on synthetic shapes (300 images, 3 classes, 32 px, 8% uniform flips, tiny members).

Writes ``benchmarks/experiments/results/synthetic-shapes-modes.json``. Used to choose the default fitting mode
while the real-data CPU budget only allowed crossfit runs.

    nice -n 5 .venv/bin/python benchmarks/experiments/modes_synthetic.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from models.evaluate import EvalSettings, run_evaluation
from models.synthetic import make_shapes
from models.train import TrainConfig

OUT = Path(__file__).resolve().parent / "results" / "synthetic-shapes-modes.json"


def main() -> int:
    torch.set_num_threads(1)
    out: dict = {"command": "nice -n 5 .venv/bin/python benchmarks/experiments/modes_synthetic.py", "device": "cpu"}
    for mode in ("crossfit", "insample"):
        data = make_shapes(300, n_classes=3, size=32, seed=11)
        s = EvalSettings(dataset="synthetic-shapes-300", noise_rate=0.08, seed=0, mode=mode, folds=3, image_size=32,
                         archs=("densenet-tiny", "resnet-tiny", "efficientnet-tiny"), device="cpu",
                         train=TrainConfig(epochs=6, batch_size=16, lr=3e-3))
        with tempfile.TemporaryDirectory() as d:
            r = run_evaluation(s, Path(d), data=data, plots=False)
        out[mode] = {k: {"f1": v["f1"], "precision": v["precision"], "recall": v["recall"]}
                     for k, v in r["methods"].items()}
        out[mode]["member_accuracy"] = r["member_accuracy"]
        out[mode]["train_s"] = r["timing_s"]["train"]
        print(mode, {k: round(v["f1"], 3) for k, v in r["methods"].items()}, flush=True)
    OUT.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
