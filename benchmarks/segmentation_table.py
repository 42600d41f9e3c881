"""The markdown table of docs/segmentation.md from benchmarks/results/segmentation_*.json (mask-level F1 / AUPRC).

    python benchmarks/segmentation_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

METHODS = ("labelqa", "cleanlab_softmin", "dual_consistency", "mean_prob_dice", "single_model_dice", "random")


def rows(results_dir: Path) -> list[str]:
    out = []
    for f in sorted(results_dir.glob("segmentation_*.json")):
        r = json.loads(f.read_text())
        b, m, st = r["benchmark"], r["methods"], r["settings"]
        cells = [f"{m[x]['f1']:.3f} / {m[x]['auprc']:.3f}" for x in METHODS]
        out.append(f"| {b['set']} | {st['noise_rate']:g} | {st['seed']} | {r['n_corrupted_units']}/{r['n_units']} | "
                   + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(__file__).parent / "results")))
