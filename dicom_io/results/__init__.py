"""Writing audit results as DICOM: TID 1500 QA report SR, heatmap Secondary Captures, Quality Issue KOS.

``write_results`` takes plain records (``AuditedAnnotation``, ``AuditedMask``, ``AlgorithmInfo``) and the
source and annotation datasets; ``write_volume_results`` the same for audited segments of SEGs over
series (``AuditedVolumeMask``). Both return the result objects with deterministic UIDs (``uids.py``):
the same inputs and bundle give the same UIDs, changed results give new ones. No torch here.
"""

from dicom_io.results.records import (
    MASK_ERROR_KINDS,
    MASK_VERDICTS,
    VERDICTS,
    AlgorithmInfo,
    AuditedAnnotation,
    AuditedMask,
    AuditedVolumeMask,
    as_code,
)
from dicom_io.results.write import ResultSet, file_kind, find_saved, save_results, write_results
from dicom_io.results.write_volume import write_volume_results

__all__ = ["AlgorithmInfo", "AuditedAnnotation", "AuditedMask", "AuditedVolumeMask", "as_code", "file_kind",
           "save_results", "write_results", "write_volume_results", "ResultSet", "find_saved", "VERDICTS",
           "MASK_VERDICTS", "MASK_ERROR_KINDS"]
