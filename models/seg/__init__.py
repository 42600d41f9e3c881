"""Segmentation-mask QA: cross-fitted MONAI segmenters that find wrong masks and say where and how.

``data`` (mask data sets, retina sets), ``synthetic`` (shape images), ``corruption`` (planted mask
errors), ``ensemble`` (member specs), ``train`` (cross-fitting), ``detector`` (per-mask verdicts and
regions), ``bundle`` (saved segmenters, audits on the native grid), ``evaluate`` (the benchmark).
"""

__all__ = ["data", "synthetic", "corruption", "ensemble", "train", "detector", "bundle", "evaluate"]
