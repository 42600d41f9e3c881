"""The detector table of docs/detector.md, from the committed ``*-rescored.json`` files (no numbers typed by hand).

Each column is one setting (a results-file pattern); each row a method's mean F1 ± sd over the seeds
found; then the ground-truth ceiling, the members' clean accuracy and, per run, labelqa against the
best other method of the same run. Prints Markdown.

    .venv/bin/python benchmarks/table.py > /tmp/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# (column title, results-file glob, paper's F1 for that modality)
_X, _M, _X3 = "chest_xray_pneumonia_kermany_224", "brain_tumor_mri_4class_224", "kermany_xray_3class"
COLUMNS = [
    ("X-ray 224 px, all 5840, H100", f"{_X}-crossfit3-s224-nall-e15-b64-uniform5-seed?", 0.96),
    ("MRI 224 px, all 7019, H100", f"{_M}-crossfit3-s224-nall-e15-b64-uniform5-seed?", 0.93),
    ("X-ray 64 px, 2000, CPU", f"{_X}-crossfit3-s64-n2000-e10-b32-uniform5-seed?", 0.96),
    ("MRI 64 px, 2000, CPU", f"{_M}-crossfit3-s64-n2000-e10-b32-uniform5-seed?", 0.93),
    ("X-ray 3-class 64 px, 2000, CPU, held out", f"{_X3}-crossfit3-s64-n2000-e10-b32-uniform5-seed?", None),
    ("MRI 32 px, all 7019, CPU, held out", f"{_M}-crossfit3-s32-nall-e10-b32-uniform5-seed?", 0.93),
    ("MRI 64 px, 2000, asymmetric flips (c -> c+1), CPU, held out",
     f"{_M}-crossfit3-s64-n2000-e10-b32-asymmetric5-seed?", None),
    ("X-ray 3-class 64 px, 2000, asymmetric flips, CPU, held out",
     f"{_X3}-crossfit3-s64-n2000-e10-b32-asymmetric5-seed?", None),
    ("X-ray 64 px, 2000, 10% flips, CPU, held out", f"{_X}-crossfit3-s64-n2000-e10-b32-uniform10-seed?", None),
    ("MRI 64 px, 2000, 10% flips, CPU, held out", f"{_M}-crossfit3-s64-n2000-e10-b32-uniform10-seed?", None),
    ("digits 32 px, 10 classes, not medical", "sklearn_digits-crossfit3-s32-nall-e10-b32-uniform5-seed?", None),
    ("X-ray 32 px, 600", f"{_X}-crossfit3-s32-n600-e6-b32-uniform5-seed?", 0.96),
    ("MRI 32 px, 600", f"{_M}-crossfit3-s32-n600-e6-b32-uniform5-seed?", 0.93),
]
ROWS = [("**labelqa**", "labelqa"), ("labelqa without the count discount (count_z = 0)", "labelqa_count_z0"),
        ("labelqa, earlier confident-joint cut", "labelqa_confident_joint"),
        ("dual_consistency (paper's rule)", "dual_consistency"), ("vote (unanimous)", "vote"),
        ("confidence", "confidence"), ("cleanlab", "cleanlab"), ("alc", "alc"), ("random", "random")]


def _fmt(v: list[float]) -> str:
    return f"{v[0]:.3f}" if len(v) == 1 else f"{np.mean(v):.3f} ± {np.std(v):.3f}"


def main() -> int:
    cols = []
    for title, pattern, paper in COLUMNS:
        files = sorted(RESULTS.glob(pattern + "-rescored.json"))
        if not files:
            continue
        runs = [json.loads(f.read_text()) for f in files]
        raw = [json.loads((RESULTS / r["source"]).read_text()) for r in runs]
        seeds = ",".join(str(r["seed"]) for r in runs)
        cols.append((f"{title} (seeds {seeds})", runs, raw, paper))
    out = ["| F1 (5% uniform flips unless the column says otherwise) | " + " | ".join(c[0] for c in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for label, key in ROWS:
        cells = [_fmt([r["methods"][key]["f1"] for r in runs]) if all(key in r["methods"] for r in runs) else "—"
                 for _, runs, _, _ in cols]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("| ceiling: top-n by 1 − mean p(given), n = true count (uses ground truth) | "
               + " | ".join(_fmt([r["oracle"]["f1"] for r in runs]) for _, runs, _, _ in cols) + " |")
    acc = []
    for _, _, raw, _ in cols:
        archs = [a for a in raw[0]["member_accuracy"] if a != "ensemble_mean"]
        acc.append(" / ".join(f"{np.mean([r['member_accuracy'][a] for r in raw]):.2f}" for a in archs))
    out.append("| member clean accuracy | " + " | ".join(acc) + " |")
    out.append("| paper (224 px) | " + " | ".join("—" if p is None else f"{p:.2f}" for *_, p in cols) + " |")
    out.append("")
    out.append("Per run, labelqa against the best other method of the same run (labelqa variants excluded):")
    for title, runs, _, _ in cols:
        pairs = []
        for r in runs:
            m = r["methods"]
            best_name, best = max(((k, v["f1"]) for k, v in m.items() if not k.startswith("labelqa")),
                                  key=lambda kv: kv[1])
            pairs.append((m["labelqa"]["f1"], best, best_name))
        wins = sum(a > b for a, b, _ in pairs)
        detail = ", ".join(f"{a:.3f} vs {b:.3f} {n}" for a, b, n in pairs)
        out.append(f"- {title}: labelqa beats the best other method on {wins}/{len(pairs)} runs ({detail})")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
