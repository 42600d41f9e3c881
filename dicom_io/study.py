"""One study's files, each parsed once: what reading the annotations and writing the results share.

:func:`open_study` / :func:`open_studies` parse every file once (``pydicom.dcmread`` with deferred
large values: Pixel Data and other big elements are read from the file when first used, then kept),
drop labelqa's own result objects by the one rule (:func:`dicom_io.results.series.is_own_output`),
and record unreadable files as issue records. The annotation reader
(:func:`dicom_io.annotations.read_study`) and the result writer take the same :class:`Study`, so
no file is parsed twice in an audit. A reviewer's corrected annotation (series 9907) is an
annotation, not a result: it stays.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_io.annotations.records import UNREADABLE_FILE, IssueRecord
from dicom_io.results.series import is_own_output_dataset

__all__ = ["DEFER_SIZE", "StudyFile", "Study", "open_study", "open_studies", "list_files"]

DEFER_SIZE = "64 KB"
"""Element values larger than this are read from the file when first used (Pixel Data, big sequences)."""

_UID_NAME = re.compile(r"^[0-9.]+$")


@dataclass(frozen=True)
class StudyFile:
    """One parsed instance: where it is and its dataset (large values loaded on first use)."""

    path: Path
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.dataset.get("StudyInstanceUID", ""))


@dataclass
class Study:
    """The parsed instances of one study (labelqa's own results left out) and what could not be read.

    ``files`` may hold instances of other studies when they were given together (the annotation
    reader reports those); ``uid`` is the study most of the files belong to.
    """

    uid: str | None
    files: dict[str, StudyFile] = field(default_factory=dict)  # SOP Instance UID -> file
    issues: list[IssueRecord] = field(default_factory=list)
    own_outputs: int = 0  # result objects of ours that were left out

    def __contains__(self, sop_instance_uid: object) -> bool:
        return sop_instance_uid in self.files

    def __iter__(self) -> Iterator[StudyFile]:
        return iter(self.files.values())

    def __len__(self) -> int:
        return len(self.files)

    def dataset(self, sop_instance_uid: str) -> Dataset:
        """The dataset of an instance of this study (KeyError when it is not here)."""
        return self.files[sop_instance_uid].dataset

    def path(self, sop_instance_uid: str) -> Path:
        return self.files[sop_instance_uid].path

    def datasets(self, sop_instance_uids: Iterable[str]) -> dict[str, Dataset]:
        """SOP Instance UID -> dataset for the given UIDs (KeyError names the first one missing)."""
        return {u: self.dataset(u) for u in sop_instance_uids}


def list_files(paths: Iterable[Path | str] | Path | str) -> list[Path]:
    """Files and the files under folders, in a stable order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out


def _looks_like_dicom(p: Path) -> bool:
    """A DICM preamble, or a name that promises DICOM (.dcm/.dicom, or a bare UID as stores name files)."""
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return True  # let the reader report it
    if head[128:132] == b"DICM":
        return True
    return p.suffix.lower() in (".dcm", ".dicom") or bool(_UID_NAME.match(p.name))


def _parse(paths: Iterable[Path], issues: list[IssueRecord]) -> tuple[list[StudyFile], int]:
    """Each DICOM file parsed once; other files (no preamble, no DICOM-like name) are skipped silently."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out: list[StudyFile] = []
    own = 0
    for p in paths:
        if p.name == "DICOMDIR" or not _looks_like_dicom(p):
            continue
        try:
            try:
                ds = pydicom.dcmread(p, defer_size=DEFER_SIZE)
            except InvalidDicomError:  # no preamble / file meta (older writers): read the data set as is
                ds = pydicom.dcmread(p, defer_size=DEFER_SIZE, force=True)
            _ = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except Exception as e:  # noqa: BLE001 - pydicom raises assorted errors on damaged files
            issues.append(IssueRecord(UNREADABLE_FILE, f"{p.name}: not a readable DICOM instance ({e})"))
            continue
        if is_own_output_dataset(ds):
            own += 1
            continue
        out.append(StudyFile(p, ds))
    return out, own


def _study(files: list[StudyFile], issues: list[IssueRecord], own: int) -> Study:
    counts = Counter(f.study_uid for f in files)
    uid = max(counts, key=lambda k: counts[k]) if counts else None
    return Study(uid or None, {f.sop_instance_uid: f for f in files}, issues, own)


def open_study(paths: Iterable[Path | str] | Path | str) -> Study:
    """One study from files or folders (each file parsed once; never raises for a bad file)."""
    issues: list[IssueRecord] = []
    try:
        files, own = _parse(list_files(paths), issues)
    except OSError as e:  # e.g. a folder we may not list
        return Study(None, {}, [IssueRecord(UNREADABLE_FILE, f"cannot list the study files: {e}")])
    return _study(files, issues, own)


def open_studies(paths: Iterable[Path | str] | Path | str) -> list[Study]:
    """Every study under ``paths``, by Study Instance UID; unreadable files in a last study with uid None."""
    issues: list[IssueRecord] = []
    try:
        files, own = _parse(list_files(paths), issues)
    except OSError as e:
        return [Study(None, {}, [IssueRecord(UNREADABLE_FILE, f"cannot list the files: {e}")])]
    groups: Mapping[str, list[StudyFile]] = defaultdict(list)
    for f in files:
        groups[f.study_uid].append(f)  # type: ignore[index]
    studies = [_study(fs, [], 0) for _, fs in sorted(groups.items())]
    if issues:
        studies.append(Study(None, {}, issues, own))
    return studies
