"""The label vocabulary: which coded concept means which class, and how SEG segments become classes.

A vocabulary file (TOML or JSON) looks like::

    [seg]
    absent_class = "normal"        # a referenced frame with no segment present -> this class (optional)
    match_segment_label = true     # a segment whose label equals a class name -> that class

    [[classes]]
    name = "pneumonia"
    code = { scheme = "SCT", value = "233604007", meaning = "Pneumonia" }
    aliases = [{ scheme = "DCM", value = "X-1", meaning = "Lung infection" }]  # other codes, same class
    segment_property_types = [{ scheme = "SCT", value = "39607008", meaning = "Lung" }]

A code (scheme, value) is resolved to a class through the class code, its aliases and its segment
property types. ``Vocabulary.from_class_names`` derives a vocabulary with local codes (private coding
scheme ``99LABELQA``, values ``LBL-`` + 8 hex digits of the class name, as in ``dicom_io.codes``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from dicom_io.codes import label_code

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom.sr.coding import Code

__all__ = [
    "LOCAL_SCHEME", "VocabularyError", "CodedConcept", "ClassEntry", "SegMapping", "Vocabulary", "load_vocabulary",
]

LOCAL_SCHEME = "99LABELQA"
"""Coding Scheme Designator of codes derived from class names (private schemes start with 99)."""


class VocabularyError(ValueError):
    """A vocabulary file or definition is unusable; the message names the offending entry."""


class CodedConcept(BaseModel):
    """A coded concept: coding scheme designator, code value, code meaning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str = Field(min_length=1, max_length=16, description="Coding Scheme Designator, e.g. SCT.")
    value: str = Field(min_length=1, max_length=64, description="Code Value (or Long/URN code value).")
    meaning: str = Field(min_length=1, max_length=64, description="Code Meaning.")
    scheme_version: str | None = Field(None, description="Coding Scheme Version, when needed.")

    @field_validator("scheme", "value", "meaning")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be blank")
        if "\\" in v:
            raise ValueError("must not contain a backslash")
        return v

    @property
    def key(self) -> tuple[str, str]:
        return (self.scheme.upper(), self.value)

    def to_pydicom(self) -> Code:
        """As a ``pydicom.sr.coding.Code``."""
        from pydicom.sr.coding import Code

        return Code(self.value, self.scheme, self.meaning, scheme_version=self.scheme_version)

    def to_highdicom(self) -> hd.sr.CodedConcept:
        """As a ``highdicom.sr.CodedConcept`` (imports highdicom)."""
        import highdicom as hd

        return hd.sr.CodedConcept(self.value, self.scheme, self.meaning, self.scheme_version)


class ClassEntry(BaseModel):
    """One class of the vocabulary."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Class name, as models and manifests use it.")
    code: CodedConcept = Field(description="The concept written for this class.")
    aliases: list[CodedConcept] = Field(default_factory=list, description="Other codes meaning this class.")
    segment_property_types: list[CodedConcept] = Field(
        default_factory=list, description="SEG Segmented Property Types meaning 'this class is present'."
    )
    description: str | None = Field(None, description="Free text.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be blank")
        return v


class SegMapping(BaseModel):
    """How SEG segments map to image-level classes."""

    model_config = ConfigDict(extra="forbid")

    absent_class: str | None = Field(
        None, description="Class of a referenced frame in which no segment is present (e.g. 'normal')."
    )
    match_segment_label: bool = Field(
        True, description="A segment whose Segment Label equals a class name (case-insensitive) is that class."
    )
    min_fraction: float = Field(
        0.5, gt=0, le=1, description="Fractional SEG: a pixel is inside when its fraction is at least this."
    )


class Vocabulary(BaseModel):
    """Classes and their codes; resolves codes (and segment properties) to class names."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassEntry] = Field(min_length=1, description="The classes, in model output order.")
    seg: SegMapping = Field(default_factory=SegMapping, description="SEG segment -> class mapping.")
    _code_index: dict[tuple[str, str], str] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _consistent(self) -> Vocabulary:
        seen_names: dict[str, int] = {}
        owner: dict[tuple[str, str], str] = {}
        for i, entry in enumerate(self.classes):
            low = entry.name.lower()
            if low in seen_names:
                raise ValueError(
                    f"classes[{i}] ({entry.name!r}): duplicate class name (also classes[{seen_names[low]}])"
                )
            seen_names[low] = i
            for concept in [entry.code, *entry.aliases, *entry.segment_property_types]:
                prev = owner.get(concept.key)
                if prev is not None and prev != entry.name:
                    raise ValueError(
                        f"classes[{i}] ({entry.name!r}): code {concept.scheme} {concept.value} "
                        f"already belongs to class {prev!r}"
                    )
                owner[concept.key] = entry.name
        if self.seg.absent_class is not None and self.seg.absent_class.lower() not in seen_names:
            raise ValueError(f"seg.absent_class {self.seg.absent_class!r} is not one of the classes")
        return self

    def __eq__(self, other: object) -> bool:
        # Compare content only (not the lookup cache).
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # -- lookups -------------------------------------------------------------------------------------

    def _index(self) -> dict[tuple[str, str], str]:
        if self._code_index is None:
            idx: dict[tuple[str, str], str] = {}
            for entry in self.classes:
                for concept in [entry.code, *entry.aliases, *entry.segment_property_types]:
                    idx[concept.key] = entry.name
            self._code_index = idx
        return self._code_index

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def lookup(self, scheme: str, value: str) -> str | None:
        """The class name a code (scheme, value) means, or None.

        Legacy SNOMED-RT codes (SRT, as older tools write them) and SNOMED CT codes (SCT) match each
        other through pydicom's SRT <-> SCT mapping.
        """
        scheme, value = str(scheme).strip().upper(), str(value).strip()
        idx = self._index()
        hit = idx.get((scheme, value))
        if hit is None and scheme in ("SRT", "SCT", "SNM3"):
            other = _snomed_equivalent(scheme, value)
            if other is not None:
                hit = idx.get(other)
        return hit

    def lookup_label(self, text: str) -> str | None:
        """The class whose name equals ``text`` (case-insensitive), or None."""
        t = text.strip().lower()
        for c in self.classes:
            if c.name.lower() == t:
                return c.name
        return None

    def code_for(self, name: str) -> CodedConcept:
        """The coded concept written for class ``name``; KeyError when it is not a class."""
        for c in self.classes:
            if c.name == name:
                return c.code
        raise KeyError(f"{name!r} is not a class of this vocabulary ({', '.join(self.class_names)})")

    # -- construction and files ----------------------------------------------------------------------

    @classmethod
    def from_class_names(cls, names: list[str] | tuple[str, ...], *, absent_class: str | None = None) -> Vocabulary:
        """A vocabulary with local codes (scheme 99LABELQA, value LBL-<8 hex of the name>) for each class."""
        entries = []
        try:
            for name in names:
                code = label_code(name, name[:64])
                concept = CodedConcept(scheme=code.scheme_designator, value=code.value, meaning=code.meaning)
                entries.append(ClassEntry(name=name, code=concept))
            return cls(classes=entries, seg=SegMapping(absent_class=absent_class))
        except ValidationError as e:
            where = f"class name {names[len(entries)]!r}" if len(entries) < len(names) else "class names"
            raise VocabularyError(_format_errors(e, where)) from None

    @classmethod
    def from_data(cls, data: Mapping[str, object], source: str = "vocabulary") -> Vocabulary:
        """Validate a parsed vocabulary document; VocabularyError names the offending entry."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise VocabularyError(_format_errors(e, source, data)) from None

    def to_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def to_toml(self, path: Path | str | None = None) -> str:
        """Write (and return) the vocabulary as TOML, in the format ``load_vocabulary`` reads."""
        lines = ["# labelqa label vocabulary", "", "[seg]"]
        seg = self.seg
        if seg.absent_class is not None:
            lines.append(f"absent_class = {_q(seg.absent_class)}")
        lines.append(f"match_segment_label = {'true' if seg.match_segment_label else 'false'}")
        lines.append(f"min_fraction = {seg.min_fraction!r}")
        for c in self.classes:
            lines += ["", "[[classes]]", f"name = {_q(c.name)}", f"code = {_concept(c.code)}"]
            if c.aliases:
                lines.append("aliases = [" + ", ".join(_concept(a) for a in c.aliases) + "]")
            if c.segment_property_types:
                lines.append(
                    "segment_property_types = [" + ", ".join(_concept(a) for a in c.segment_property_types) + "]"
                )
            if c.description:
                lines.append(f"description = {_q(c.description)}")
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text


def _snomed_equivalent(scheme: str, value: str) -> tuple[str, str] | None:
    """The SCT code of an SRT code, or the reverse (pydicom's SNOMED mapping table)."""
    try:
        from pydicom.sr._snomed_dict import mapping
    except ImportError:  # pragma: no cover - private table moved
        return None
    if scheme in ("SRT", "SNM3"):
        sct = mapping.get("SRT", {}).get(value)
        return ("SCT", str(sct)) if sct else None
    srt = mapping.get("SCT", {}).get(value)
    return ("SRT", str(srt)) if srt else None


def _q(s: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes; no control characters left raw).
    return json.dumps(s, ensure_ascii=False)


def _concept(c: CodedConcept) -> str:
    parts = [f"scheme = {_q(c.scheme)}", f"value = {_q(c.value)}", f"meaning = {_q(c.meaning)}"]
    if c.scheme_version:
        parts.append(f"scheme_version = {_q(c.scheme_version)}")
    return "{ " + ", ".join(parts) + " }"


def _format_errors(e: ValidationError, source: str, data: Any = None) -> str:
    msgs = []
    for err in e.errors():
        loc = list(err.get("loc", ()))
        where = ""
        for i, part in enumerate(loc):
            if isinstance(part, int):
                where += f"[{part}]"
            else:
                where += ("." if i else "") + str(part)
        # Name the class entry by its name when we can.
        if data is not None and len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
            try:
                name = data["classes"][loc[1]].get("name")
                if name:
                    where = f"classes[{loc[1]}] ({name!r})" + where[len(f"classes[{loc[1]}]") :]
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
        msg = err.get("msg", "invalid")
        msgs.append(f"{where or '(top level)'}: {msg}" if where else msg)
    return f"invalid vocabulary {source}: " + "; ".join(msgs)


def load_vocabulary(path: Path | str) -> Vocabulary:
    """Read a vocabulary from a TOML or JSON file; VocabularyError with the offending entry otherwise."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise VocabularyError(f"cannot read vocabulary {p}: {e.strerror or e}") from None
    text = raw.decode("utf-8", errors="replace")
    is_json = p.suffix.lower() == ".json" or (p.suffix.lower() != ".toml" and text.lstrip().startswith("{"))
    try:
        data = json.loads(text) if is_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise VocabularyError(f"vocabulary {p} is not valid {'JSON' if is_json else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise VocabularyError(f"vocabulary {p}: the top level must be a table/object with 'classes'")
    return Vocabulary.from_data(data, str(p))
