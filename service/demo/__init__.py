"""The demo wing: ``labelqa demo`` (one demo task per kind of annotation), ``labelqa dicomize`` and the local
peers the demo starts (Orthanc, labelqa's own archive)."""

from service.demo.common import (
    DEMO_ARCHS,
    REPO,
    DemoConfig,
    DemoData,
    DemoError,
    DemoReport,
    DemoTask,
    demo_config,
    demo_task,
    demo_tasks,
    register_demo,
)
from service.demo.labels import SHAPE_NAMES, LabelDemo, make_demo_data, shapes_npz
from service.demo.masks import DEMO_SEG_ARCHS, MaskDemo, make_seg_demo_data
from service.demo.run import (
    demo_orthanc,
    dicom_files,
    orthanc_routing_config,
    quiet_logging,
    render_text,
    report_json,
    run_demo,
    send_studies,
    train_demo_bundle,
)
from service.demo.volumes import DEMO_VOLUME_ARCHS, VolumeDemo, make_volume_demo_data

__all__ = [
    "DEMO_ARCHS", "REPO", "DemoConfig", "DemoData", "DemoError", "DemoReport", "DemoTask", "demo_config", "demo_task",
    "demo_tasks", "register_demo", "SHAPE_NAMES", "LabelDemo", "make_demo_data", "shapes_npz", "DEMO_SEG_ARCHS",
    "MaskDemo", "make_seg_demo_data", "DEMO_VOLUME_ARCHS", "VolumeDemo", "make_volume_demo_data", "demo_orthanc",
    "dicom_files", "orthanc_routing_config", "quiet_logging", "render_text", "report_json", "run_demo",
    "send_studies", "train_demo_bundle",
]
