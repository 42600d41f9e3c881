"""Header values that real files carry but result writers refuse: found, then normalised or left out.

A PACS stores what it receives: a Study Date of ``2024-01-19`` or ``20241301``, a Study Time of
``10:00:00``, a Patient's Sex of ``Q``. highdicom refuses such values when it copies the patient and
study attributes of a source image into a result object, which would fail the whole audit. Here
every top-level date (DA), time (TM) and date-time (DT) value and Patient's Sex is checked:
:func:`odd_values` says which are odd and what is written instead (the value in its standard form
when the intent is clear, else an empty value: left out), :func:`normalised` applies that to a
shallow copy. The reader of annotations records each as an issue; the result writer writes the
copy. Messages name the attribute and the instance, never the value (dates of birth are patient data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

__all__ = ["OddValue", "odd_values", "normalised"]

_ISO_DATE = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})$")
_COLON_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_ISO_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_SEXES = ("M", "F", "O")
_PATIENT_SEX = 0x00100040


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:  # a private or unknown tag
        return "UN"


@dataclass(frozen=True)
class OddValue:
    """One odd header value: its attribute and what is written instead (``None``: an empty value)."""

    keyword: str
    vr: str
    replacement: str | None

    def message(self, uid: str) -> str:
        """What an issue record says about it (no value: dates of birth and such are patient data)."""
        what = f"{self.keyword} ({self.vr}) of instance {uid} is not a valid value"
        if self.replacement is None:
            return f"{what}; left out of the result objects"
        return f"{what}; written in its standard form in the result objects"


def _valid(vr: str, v: str) -> bool:
    try:
        {"DA": DA, "TM": TM, "DT": DT}[vr](v)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _fix(vr: str, v: str) -> str | None:
    """The standard form of a DA/TM/DT value whose intent is clear, else None."""
    v = v.strip()
    if vr == "DA" and (m := _ISO_DATE.match(v)):
        fixed = "".join(m.groups())
    elif vr == "TM" and (m := _COLON_TIME.match(v)):
        fixed = m[1] + m[2] + (m[3] or "") + (m[4] or "")
    elif vr == "DT" and (m := _ISO_DATETIME.match(v)):
        fixed = "".join(g or "" for g in m.groups())
    else:
        return None
    if vr != "TM":
        try:
            date(int(fixed[:4]), int(fixed[4:6]), int(fixed[6:8]))
        except ValueError:
            return None
    return fixed if _valid(vr, fixed) else None


def _check(vr: str, value: object) -> tuple[bool, str | None]:
    """(odd, replacement) of one element value (a string, or several)."""
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out: list[str] = []
    odd = False
    for v in values:
        s = "" if v is None else str(v)
        if not s.strip() or _valid(vr, s):
            out.append(s)
            continue
        odd = True
        fixed = _fix(vr, s)
        if fixed is None:
            return True, None
        out.append(fixed)
    return odd, "\\".join(out)


def odd_values(ds: Dataset) -> list[OddValue]:
    """The odd top-level date, time and date-time values and Patient's Sex of ``ds``, in tag order."""
    out: list[OddValue] = []
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)  # not converted: a long sequence is not parsed for nothing
        vr = raw.VR if raw is not None and raw.VR else _dictionary_vr(tag)
        if vr not in ("DA", "TM", "DT") and tag != _PATIENT_SEX:
            continue
        elem = ds[tag]
        if vr in ("DA", "TM", "DT"):
            try:
                odd, replacement = _check(vr, elem.value)
            except Exception:  # noqa: BLE001 - a value pydicom cannot even hand over is odd as well
                odd, replacement = True, None
            if odd:
                out.append(OddValue(elem.keyword or str(elem.tag), vr, replacement))
        elif elem.keyword == "PatientSex":
            v = str(elem.value or "").strip()
            if v and v not in _SEXES:
                out.append(OddValue("PatientSex", "CS", v.upper() if v.upper() in _SEXES else None))
    return out


def normalised(ds: Dataset, odd: list[OddValue] | None = None) -> Dataset:
    """``ds`` itself when nothing is odd, else a shallow copy with each odd value replaced or emptied.

    Emptied, not removed: highdicom reads the type 2 patient and study attributes of its evidence
    unconditionally.
    """
    odd = odd_values(ds) if odd is None else odd
    if not odd:
        return ds
    fixes = {o.keyword: o for o in odd}
    out = Dataset()
    for elem in ds:
        o = fixes.get(elem.keyword or str(elem.tag))
        out.add(elem if o is None else DataElement(elem.tag, elem.VR, o.replacement or None))
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out
