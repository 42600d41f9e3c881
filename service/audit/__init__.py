"""The audit wing: what auditing one study is, for every kind of annotation (see :mod:`service.audit.task`).

The tasks register themselves when imported here: class labels (:mod:`service.audit.labels`), masks
frame by frame (:mod:`service.audit.masks`) and segments of SEGs over series (:mod:`service.audit.volumes`).
"""

from service.audit.labels import LABEL_TASK, LabelBatch, LabelInput, LabelResult, LabelTask
from service.audit.masks import MASK_TASK, MaskBatch, MaskInput, MaskResult, MaskTask
from service.audit.offline import audit_dicom_dir
from service.audit.rows import AuditRow, LabelRow, MaskRow, RegionRow, VolumeRow, is_mask_row, row_from_dict
from service.audit.task import (
    AUDITOR,
    LABEL_NOT_IN_BUNDLE,
    AuditTask,
    InferFn,
    ResultOptions,
    StudyAudit,
    StudyAuditor,
    TaskInput,
    algorithm_info,
    audit_inputs,
    audit_study,
    class_code,
    model_step,
    register,
    registered_tasks,
    resolve_vocabulary,
    task_for,
    warm_up,
)
from service.audit.volumes import VOLUME_TASK, VolumeBatch, VolumeCase, VolumeInput, VolumeResult, VolumeTask

__all__ = [
    "LABEL_TASK", "LabelBatch", "LabelInput", "LabelResult", "LabelTask", "MASK_TASK", "MaskBatch", "MaskInput",
    "MaskResult", "MaskTask", "audit_dicom_dir", "AuditRow", "LabelRow", "MaskRow", "RegionRow", "is_mask_row",
    "row_from_dict", "LABEL_NOT_IN_BUNDLE", "AuditTask", "InferFn", "ResultOptions", "StudyAudit", "TaskInput",
    "algorithm_info", "audit_inputs", "audit_study", "class_code", "model_step", "register", "registered_tasks",
    "resolve_vocabulary", "task_for", "warm_up", "AUDITOR", "StudyAuditor", "VolumeRow", "VOLUME_TASK",
    "VolumeBatch", "VolumeCase", "VolumeInput", "VolumeResult", "VolumeTask",
]
