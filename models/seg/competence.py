"""Whether the ensemble can judge a class's masks on this data at all, estimated without ground truth.

The detector trusts the members' consensus where it disagrees with a mask. That only makes sense
when the members segment the class well: when they are weak (few images, hard structures, too small
a grid), they disagree with most masks, right or wrong, and a cut on that disagreement flags
nearly everything. So before any verdict, per class (on the out-of-fold predictions):

- **median out-of-fold Dice**: each member's Dice with the given masks that have a structure, the
  median over masks of the members' mean. Most given masks are right, so this is close to how well
  the members segment the class here;
- **member agreement**: the median pairwise Dice of the members' masks (on the same masks);
- **detection rate**: every given mask is corrupted by each planted-error operation of
  ``models.seg.corruption`` and scored against the same probabilities; the rate is the share of
  those simulated wrong masks that score above the 90th percentile of the given masks' scores,
  i.e. that would rank among the top 10% of this data set's masks. It is what a reviewer working
  down the list could find if these were the errors: near 0.1 when a wrong mask looks like any
  other mask to these members.

A class is judged only when the median Dice reaches ``min_dice`` and the detection rate reaches
``min_detection`` (``SegDetectorConfig``; the constants and the runs they were chosen on are in
docs/segmentation.md). Otherwise the audit states "the models cannot judge '<class>' masks here"
with the numbers, and flags none of that class's masks (they are reported as hard cases when their
score passes the cut, else consistent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["ClassCompetence", "class_competence", "cannot_judge"]


@dataclass
class ClassCompetence:
    """The ensemble's competence on one class's masks (see the module docstring)."""

    class_name: str
    judged: bool
    n_masks: int
    n_with_structure: int
    median_dice: float | None
    """Median over the masks with a structure of the members' mean Dice with the given mask (None: no mask has one)."""
    member_median_dice: dict[str, float] = field(default_factory=dict)
    median_agreement: float | None = None
    detection_rate: float | None = None
    """Share of simulated wrong masks scoring in the top 10% of the given masks (None: nothing to simulate)."""
    reason: str = ""

    def finding(self) -> str | None:
        """The sentence for reports and the worklist when the class is not judged, else None."""
        if self.judged:
            return None
        return f"the models cannot judge '{self.class_name}' masks here: {self.reason}"

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("median_dice", "median_agreement", "detection_rate"):
            d[k] = None if d[k] is None else round(float(d[k]), 4)
        d["member_median_dice"] = {a: round(float(v), 4) for a, v in self.member_median_dice.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClassCompetence:
        return cls(**d)


def class_competence(class_name: str, dice_members: np.ndarray, agreement: np.ndarray, has_structure: np.ndarray,
                     detection_rate: float | None, *, min_dice: float, min_detection: float,
                     archs: list[str] | None = None) -> ClassCompetence:
    """Judge one class from per-mask numbers (any spatial dimension upstream: these are per mask).

    Parameters
    ----------
    dice_members : (members, masks) each member's Dice with the given mask.
    agreement : (masks,) mean pairwise Dice of the members' masks.
    has_structure : (masks,) the given mask is not empty.
    detection_rate : share of simulated wrong masks scoring in the top 10% of the given masks, or None.
    """
    dice_members = np.asarray(dice_members, np.float64)
    has = np.asarray(has_structure, bool)
    names = archs or [f"member{j}" for j in range(len(dice_members))]
    n = int(dice_members.shape[1]) if dice_members.ndim == 2 else 0
    if not has.any():
        return ClassCompetence(class_name, True, n, 0, None, {}, None, detection_rate,
                               "no given mask has a structure: nothing to measure the members on")
    md = float(np.median(dice_members[:, has].mean(0)))
    member = {a: float(np.median(dice_members[j, has])) for j, a in enumerate(names)}
    ag = float(np.median(np.asarray(agreement, np.float64)[has]))
    problems = []
    if md < min_dice:
        problems.append(f"median out-of-fold Dice {md:.2f} (< {min_dice:g})")
    if detection_rate is not None and detection_rate < min_detection:
        problems.append(f"a simulated error ranks among the top 10% of masks in only {100 * detection_rate:.0f}% "
                        f"of cases (< {100 * min_detection:.0f}%)")
    if problems:
        reason = "; ".join(problems) + f"; member agreement {ag:.2f}"
        if md >= min_dice:
            reason = f"median out-of-fold Dice {md:.2f}, but " + reason
    else:
        rate = "" if detection_rate is None else f", detection rate {100 * detection_rate:.0f}%"
        reason = f"median out-of-fold Dice {md:.2f}, member agreement {ag:.2f}{rate}"
    return ClassCompetence(class_name, not problems, n, int(has.sum()), md, member, ag, detection_rate, reason)


def cannot_judge(competence: list[dict] | None, class_names: list[str]) -> dict[str, str]:
    """Class name -> the "cannot judge" sentence, for the classes whose stored competence (a bundle's
    ``thresholds.competence``, one dict per class) says the ensemble may not flag them."""
    out = {}
    for c, name in enumerate(class_names):
        if competence and c < len(competence) and not competence[c].get("judged", True):
            out[name] = ClassCompetence.from_dict({**competence[c], "class_name": name}).finding() or ""
    return out
