"""Volume (3-D) segmentation QA: cross-fitted MONAI 3-D segmenters that audit a mask per (case, segment).

``data`` (NIfTI / NRRD / MHA, the MSD / nnU-Net layout), ``preprocess`` (intensity, resampling),
``corruption`` (planted 3-D mask errors), ``ensemble`` (3-D member specs), ``train`` (patch training,
sliding-window inference, cross-fitting by case), ``probs`` (per-segment probability storage),
``detector`` (verdicts, regions in patient coordinates, predicted Dice), ``bundle`` (saved 3-D
segmenters and audits), ``evaluate`` (the benchmark and its baselines).
"""

__all__ = ["data", "preprocess", "corruption", "ensemble", "train", "probs", "detector", "synthetic", "bundle",
           "evaluate"]
