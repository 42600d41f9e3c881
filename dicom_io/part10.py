"""Part 10 bytes without pydicom: the identifying header of a received instance and a structure check.

The listener writes the bytes it received (never a re-encoded copy), so it needs what identifies an
instance (UIDs, patient/study/series attributes for the index) straight from the byte string, in one
pass over its elements. The same pass checks the structure: pydicom reads truncated data without
complaint, so the element chain (top level and the items of every sequence) must end exactly at
the end of the file. Pixel data is never decoded. Deflated Explicit VR Little Endian is inflated a chunk
at a time as the walk goes (bounded memory, whatever the dataset inflates to).
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import cast

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import DicomDictionary, tag_for_keyword

__all__ = [
    "UID_RE", "InvalidInstance", "UnreadableDataset", "MissingUID", "TooLarge", "SOPClassMismatch", "Header",
    "read_header", "check_structure", "path_component", "part10_bytes", "MAX_INFLATED_BYTES", "MAX_NESTING",
    "INFLATE_CHUNK", "InflateBudget",
]

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "StudyDescription",
    "SeriesNumber",
    "SeriesDescription",
    "Manufacturer",
]


# --------------------------------------------------------------------------------------------
# errors: what was wrong with a received instance (the listener maps them to DICOM statuses)


class InvalidInstance(ValueError):
    """A received instance cannot be stored; ``reason`` is a short machine-readable code."""

    reason = "invalid"


class UnreadableDataset(InvalidInstance):
    """The bytes do not parse as a DICOM dataset."""

    reason = "unreadable"


class MissingUID(InvalidInstance):
    """SOP Instance, SOP Class, Study or Series Instance UID is missing or malformed."""

    reason = "missing_uid"


class TooLarge(InvalidInstance):
    """The dataset would exceed a size limit once decoded (e.g. a deflated dataset that inflates too far)."""

    reason = "too_large"


class SOPClassMismatch(InvalidInstance):
    """The dataset's SOP Class/Instance UID disagrees with what the C-STORE request announced."""

    reason = "sop_class_mismatch"


# --------------------------------------------------------------------------------------------
# header parsing


@dataclass(frozen=True)
class Header:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str | None
    modality: str | None
    patient_id: str | None
    issuer: str | None
    patient_name: str | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None
    series_number: str | None
    series_description: str | None
    manufacturer: str | None = None
    nonconforming: tuple[str, ...] = ()
    """What is stored although it does not conform (e.g. a UID that is not a valid UID string)."""


_HEADER_TAG_MAP: dict[str, int] = {k: cast(int, tag_for_keyword(k)) for k in _HEADER_TAGS}  # all known keywords
_TS_TAG = 0x00020010
_CHARSET_TAG = 0x00080005
_WANTED = frozenset({*_HEADER_TAG_MAP.values(), _TS_TAG, _CHARSET_TAG})
_TEXT_KEYWORDS = {
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
    "Manufacturer",
}


def _decode(value: bytes | None, charsets: list[str], text: bool) -> str | None:
    if not value:
        return None
    v = value.rstrip(b"\x00 ").lstrip(b" ")
    if not v:
        return None
    if v.isascii() and b"\x1b" not in v:  # no ISO 2022 escape sequences: plain ASCII
        return v.decode("ascii")
    if not text:
        return v.decode("ascii", "replace")
    try:
        return decode_bytes(v, convert_encodings(charsets or ["ISO_IR 6"]), {0x5E, 0x3D, 9, 10, 12, 13}).strip() or None
    except Exception:  # unknown character set: keep something readable
        return v.decode("latin-1")


MAX_INFLATED_BYTES = 64 << 20
"""Default cap on the inflated size of a Deflated Explicit VR dataset (``[store] max_inflated_mb``)."""
MAX_NESTING = 64
_INDEXABLE_UID = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces, fits the index


def read_header(raw: bytes, *, max_inflated_bytes: int = MAX_INFLATED_BYTES, budget: InflateBudget | None = None,
                ) -> Header:
    """The identifying attributes of a Part 10 byte string, from one pass over its elements.

    The pass also checks the structure (truncation, bad VRs, sequences nested deeper than
    ``MAX_NESTING``); pixel data is never decoded. A UID that is present but not a valid UID string
    (letters, leading zeros, a trailing dot) is kept and listed in ``Header.nonconforming``, as a
    PACS stores such instances; only a missing UID, or one that cannot be indexed (longer than 64
    characters, spaces or control characters), is refused. Raises UnreadableDataset, MissingUID or
    TooLarge (a deflated dataset that inflates beyond ``max_inflated_bytes``, or more of them
    inflating at once than ``budget``, process-wide, allows). A deflated dataset is inflated a chunk
    at a time while it is walked and never held whole.
    """
    values = _scan(raw, max_inflated_bytes, budget)
    charsets = [c for c in (_decode(values.get(_CHARSET_TAG), [], False) or "").split("\\") if c]
    v = {name: _decode(values.get(tag), charsets, name in _TEXT_KEYWORDS) for name, tag in _HEADER_TAG_MAP.items()}
    nonconforming = []
    uids: dict[str, str] = {}
    for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = v[name]
        if not uid:
            raise MissingUID(f"{name} is missing")
        if not UID_RE.match(uid) or len(uid) > 64:
            if not _INDEXABLE_UID.match(uid):
                raise MissingUID(f"{name} is not a valid UID and cannot be indexed")
            nonconforming.append(f"{name} is not a valid UID string")
        uids[name] = uid
    return Header(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=_decode(values.get(_TS_TAG), [], False),
        modality=v["Modality"],
        patient_id=v["PatientID"],
        issuer=v["IssuerOfPatientID"],
        patient_name=v["PatientName"],
        study_date=v["StudyDate"],
        accession_number=v["AccessionNumber"],
        study_description=v["StudyDescription"],
        series_number=v["SeriesNumber"],
        series_description=v["SeriesDescription"],
        manufacturer=v["Manufacturer"],
        nonconforming=tuple(nonconforming),
    )


def path_component(uid: str) -> str:
    """A UID as a file or directory name: itself when valid, else a stable hash-derived name."""
    if UID_RE.match(uid):
        return uid
    import hashlib

    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]


def _short_element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _uid_value(uid: str) -> bytes:
    b = uid.encode("ascii", "replace")
    return b + b"\x00" if len(b) % 2 else b


def part10_bytes(
    dataset: bytes,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """A received dataset as a Part 10 file: preamble, ``DICM``, file meta group, then ``dataset`` as is.

    The meta group is the one ``pydicom``/``pynetdicom`` write for a C-STORE (group length,
    version 00\\01, media storage SOP class and instance, transfer syntax, implementation class UID
    and version name; Explicit VR Little Endian), byte for byte, without building a Dataset.
    """
    version = implementation_version_name.encode("ascii", "replace")
    if len(version) % 2:
        version += b" "
    body = b"".join((
        struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01",
        _short_element(0x00020002, b"UI", _uid_value(sop_class_uid)),
        _short_element(0x00020003, b"UI", _uid_value(sop_instance_uid)),
        _short_element(0x00020010, b"UI", _uid_value(transfer_syntax_uid)),
        _short_element(0x00020012, b"UI", _uid_value(implementation_class_uid)),
        _short_element(0x00020013, b"SH", version),
    ))
    group_length = _short_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"".join((b"\x00" * 128, b"DICM", group_length, body, dataset))


# --------------------------------------------------------------------------------------------
# structure check: pydicom reads truncated data without complaint, so walk the element chain (top
# level, and the items of every sequence, whatever their lengths) and require it to end exactly at
# the end of the file. A deflated dataset is walked while it inflates, a chunk at a time: only the
# values the index needs are kept, never the inflated dataset.

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_DEFLATED = "1.2.840.10008.1.2.1.99"
# one unpack per element header: tag + VR + short length (explicit), tag + length (implicit)
_EXPLICIT_LE_S, _EXPLICIT_BE_S = struct.Struct("<HH2sH"), struct.Struct(">HH2sH")
_IMPLICIT_LE_S, _IMPLICIT_BE_S = struct.Struct("<HHL"), struct.Struct(">HHL")
_U32_LE, _U32_BE = struct.Struct("<L"), struct.Struct(">L")
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
# tags whose dictionary VR is SQ: what pydicom parses as a sequence where the VR is implicit or UN
_SQ_TAGS = frozenset(t for t, entry in DicomDictionary.items() if entry[0] == "SQ")
_PIXEL_DATA = 0x7FE00010
_KEEP = 1 << 16  # bytes kept of a wanted value (UIDs, names: far shorter in any conforming file)
INFLATE_CHUNK = 1 << 18
"""Inflated bytes produced per step of the walk over a deflated dataset."""


class _Broken(Exception):
    pass


def _element(tag: int) -> str:
    return "element" if tag < 0 else f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Source:
    """The bytes being walked: ``data`` holds absolute offsets ``[base, hi)``; ``fill`` brings more.

    For bytes in memory the window is the whole dataset; a deflated dataset slides its window as the
    walk goes (:class:`_Inflating`).
    """

    __slots__ = ("data", "base", "hi")

    def __init__(self, data: bytes) -> None:
        self.data, self.base, self.hi = data, 0, len(data)

    def fill(self, start: int, upto: int) -> None:
        """Make ``[start, upto)`` available if the data reach that far (bytes before ``start`` may go)."""


class InflateBudget:
    """Inflated bytes that walks of deflated datasets may hold at once, process-wide.

    Each walk reserves its window for as long as it runs; one that cannot get it within
    ``wait_s`` is refused (TooLarge: out of resources), so that any number of concurrent
    associations holds at most ``total_bytes`` of inflated data.
    """

    def __init__(self, total_bytes: int, wait_s: float = 10.0) -> None:
        self.total_bytes, self.wait_s = int(total_bytes), float(wait_s)
        self.in_use = 0
        self._cv = threading.Condition()

    def acquire(self, n: int) -> None:
        """Reserve ``n`` bytes; raise TooLarge when they do not become free within ``wait_s``."""
        if n > self.total_bytes:
            raise TooLarge(f"inflating needs {n} bytes, more than the inflate budget of {self.total_bytes}")
        with self._cv:
            if not self._cv.wait_for(lambda: self.in_use + n <= self.total_bytes, timeout=self.wait_s):
                raise TooLarge("too many deflated datasets inflating at once (inflate_budget_mb); try again")
            self.in_use += n

    def release(self, n: int) -> None:
        """Give back ``n`` reserved bytes."""
        with self._cv:
            self.in_use -= n
            self._cv.notify_all()


_DEFAULT_BUDGET = InflateBudget(64 << 20)


class _Inflating(_Source):
    """A raw-deflate stream inflated on demand, at most ``INFLATE_CHUNK`` bytes per step.

    Raises TooLarge as soon as more than ``limit`` bytes came out in total.
    """

    __slots__ = ("_d", "_tail", "_limit", "_total", "_eof")

    def __init__(self, deflated: bytes, limit: int) -> None:
        super().__init__(b"")
        self._d = zlib.decompressobj(-15)
        self._tail, self._limit, self._total, self._eof = deflated, limit, 0, False

    def _more(self) -> bytes:
        while not self._eof:
            try:
                out = self._d.decompress(self._tail, INFLATE_CHUNK)
            except zlib.error as e:
                raise _Broken(f"deflated data does not inflate: {e}") from None
            self._tail = self._d.unconsumed_tail
            self._total += len(out)
            if self._total > self._limit:
                raise TooLarge(f"deflated dataset inflates beyond {self._limit // 2**20} MiB (max_inflated_mb)")
            if self._d.eof or (not out and not self._tail):
                self._eof = True
            if out:
                return out
        return b""

    def fill(self, start: int, upto: int) -> None:
        if start > self.base:  # what lies before start is done with
            self.data = self.data[start - self.base :]
            self.base = start if start <= self.hi else self.hi
        parts = [self.data]
        hi = self.hi
        while hi < upto and not self._eof:
            out = self._more()
            if hi + len(out) <= start:  # still skipping a value nobody needs
                self.base = hi = hi + len(out)
                parts = [b""]
                continue
            if hi < start:
                out = out[start - hi :]
                self.base = hi = start
                parts = [b""]
            parts.append(out)
            hi += len(out)
        self.data = b"".join(parts) if len(parts) > 1 else parts[0]
        self.hi = self.base + len(self.data)


def _walk(
    src: _Source, pos: int, implicit: bool, big: bool, in_item: bool, meta: bool = False, want: dict | None = None,
    depth: int = 0, end: int | None = None,
) -> int:
    """Return the offset after the dataset starting at ``pos``; raise _Broken if it is malformed.

    The dataset ends at ``end`` (an item of defined length), at an item delimiter (``in_item``), or
    at the end of the data. With ``want`` (a dict), the raw values of the top-level elements listed
    in ``_WANTED`` are put in it (at most ``_KEEP`` bytes each).
    """
    explicit_s = _EXPLICIT_LE_S if meta or not big else _EXPLICIT_BE_S
    implicit_s = _IMPLICIT_BE_S if big else _IMPLICIT_LE_S
    u32 = _U32_LE if meta or not big else _U32_BE
    implicit = implicit and not meta
    d, base, hi = src.data, src.base, src.hi
    vr = b""
    tag = -1  # the last element passed (for messages)
    while True:
        if end is not None and pos >= end:
            if pos > end:
                raise _Broken(f"{_element(tag)} runs past the end of its item")
            return pos
        if pos + 12 > hi:
            src.fill(pos, pos + 12)
            d, base, hi = src.data, src.base, src.hi
            if pos >= hi:
                if pos > hi:
                    raise _Broken(f"{_element(tag)} runs past the end of the data")
                break
            if pos + 8 > hi:
                raise _Broken(f"truncated element header at byte {pos}")
        o = pos - base
        if implicit:
            grp, el, length = implicit_s.unpack_from(d, o)
        else:
            grp, el, vr, length = explicit_s.unpack_from(d, o)
            if meta and grp != 0x0002:
                return pos
        if grp == 0xFFFE:
            if in_item and el == 0xE00D:
                return pos + 8
            raise _Broken(f"unexpected delimiter (FFFE,{el:04X}) at byte {pos}")
        if implicit:
            pos += 8
        elif vr in _LONG_VRS:
            if pos + 12 > hi:
                raise _Broken(f"truncated element header at byte {pos}")
            (length,) = u32.unpack_from(d, o + 8)
            pos += 12
        elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
            pos += 8
        else:
            raise _Broken(f"invalid VR {vr!r} at byte {pos}")
        tag = grp << 16 | el
        if length == _UNDEFINED:
            # the items of an undefined-length UN are implicit VR little endian (PS3.5 6.2.2)
            un = not implicit and vr == b"UN"
            if depth >= MAX_NESTING:
                raise _Broken(f"sequences nested deeper than {MAX_NESTING} levels")
            # encapsulated pixel data: its items are fragments of bytes, not datasets
            fragments = vr in (b"OB", b"OW") if not implicit else tag == _PIXEL_DATA
            pos = _walk_items(src, pos, implicit or un, big and not un, depth + 1, fragments=fragments)
            d, base, hi = src.data, src.base, src.hi
            continue
        if want is not None and tag in _WANTED:
            n = min(length, _KEEP)
            if pos + n > hi:
                src.fill(pos, pos + n)
                d, base, hi = src.data, src.base, src.hi
            want[tag] = bytes(d[pos - base : pos - base + n])
        if length and (vr == b"SQ" or ((implicit or vr == b"UN") and tag in _SQ_TAGS)):
            # a sequence of defined length: walked too, so that the nesting limit holds for every form
            un = not implicit and vr == b"UN"
            if depth >= MAX_NESTING:
                raise _Broken(f"sequences nested deeper than {MAX_NESTING} levels")
            pos = _walk_items(src, pos, implicit or un, big and not un, depth + 1, pos + length)
            d, base, hi = src.data, src.base, src.hi
            continue
        pos += length
    if in_item:
        raise _Broken("item without delimiter at the end of the data")
    if end is not None:
        raise _Broken("item runs past the end of the data")
    return pos


def _walk_items(src: _Source, pos: int, implicit: bool, big: bool, depth: int, end: int | None = None, *,
                fragments: bool = False) -> int:
    """Return the offset after the items of a sequence (up to its delimiter, or to ``end``).

    Items are datasets, walked in turn; with ``fragments`` (encapsulated pixel data) they are bytes,
    skipped.
    """
    tag_s = _IMPLICIT_BE_S if big else _IMPLICIT_LE_S
    while True:
        if end is not None and pos >= end:
            if pos > end:
                raise _Broken("item runs past the end of its sequence")
            return pos
        if pos + 8 > src.hi:
            src.fill(pos, pos + 8)
            if pos + 8 > src.hi:
                raise _Broken("sequence without delimiter at the end of the data")
        grp, el, length = tag_s.unpack_from(src.data, pos - src.base)
        pos += 8
        if (grp, el) == (0xFFFE, 0xE0DD) and end is None:
            return pos
        if (grp, el) != (0xFFFE, 0xE000):
            raise _Broken(f"expected an item tag at byte {pos - 8}, found ({grp:04X},{el:04X})")
        if length == _UNDEFINED:
            if fragments:
                raise _Broken(f"pixel data fragment of undefined length at byte {pos - 8}")
            pos = _walk(src, pos, implicit, big, in_item=True, depth=depth)
        elif fragments:
            pos += length
        else:
            if end is not None and pos + length > end:
                raise _Broken("item runs past the end of its sequence")
            pos = _walk(src, pos, implicit, big, in_item=False, depth=depth, end=pos + length)


def _scan(raw: bytes, max_inflated_bytes: int = MAX_INFLATED_BYTES, budget: InflateBudget | None = None,
          ) -> dict[int, bytes]:
    """Check that ``raw`` (Part 10) is a complete, well-formed element chain; return the wanted values.

    Raises UnreadableDataset or TooLarge.
    """
    if len(raw) < 144 or raw[128:132] != b"DICM":
        raise UnreadableDataset("no DICOM preamble/prefix")
    values: dict[int, bytes] = {}
    reserved = 0
    budget = budget or _DEFAULT_BUDGET
    try:
        start = _walk(_Source(raw), 132, implicit=False, big=False, in_item=False, meta=True, want=values)
        ts = values.get(_TS_TAG, b"").rstrip(b"\x00 ").decode("ascii", "replace")
        if not ts:
            raise _Broken("file meta has no Transfer Syntax UID")
        src, offset = _Source(raw), start
        if ts == _DEFLATED:
            window = 2 * (INFLATE_CHUNK + _KEEP)  # the window of one walk at its widest, while it is joined
            budget.acquire(window)
            reserved = window
            src, offset = _Inflating(raw[start:], max_inflated_bytes), 0
        end = _walk(src, offset, implicit=ts == _IMPLICIT_LE, big=ts == _EXPLICIT_BE, in_item=False, want=values)
        if end == offset:
            raise _Broken("empty dataset")
    except _Broken as e:
        raise UnreadableDataset(f"malformed dataset: {e}") from None
    except struct.error as e:  # pragma: no cover - guarded by the length checks above
        raise UnreadableDataset(f"malformed dataset: {e}") from None
    except RecursionError:  # pragma: no cover - MAX_NESTING stops the walk long before
        raise UnreadableDataset("malformed dataset: nested too deeply") from None
    finally:
        if reserved:
            budget.release(reserved)
    return values


def check_structure(raw: bytes, *, max_inflated_bytes: int = MAX_INFLATED_BYTES) -> None:
    """Raise UnreadableDataset unless ``raw`` (Part 10) is a complete, well-formed element chain."""
    _scan(raw, max_inflated_bytes)
