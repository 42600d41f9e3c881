"""Segmentation-mask QA: cross-fitted MONAI segmenters that find wrong masks and say where and how.

``data`` (mask data sets, retina sets), ``synthetic`` (shape images), ``corruption`` (planted mask
errors), ``ensemble`` (member specs), ``recipe`` (grid and epochs from the data), ``train``
(cross-fitting), ``competence`` (whether the members can judge a class at all), ``detector``
(per-mask verdicts and regions), ``bundle`` (saved segmenters, audits on the native grid),
``evaluate`` (the benchmark).
"""

__all__ = ["data", "synthetic", "corruption", "ensemble", "recipe", "train", "competence", "detector", "bundle",
           "evaluate"]
