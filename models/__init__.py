"""Everything that learns or infers: ensemble, training, Grad-CAM, agreement, detector, bundles.

No DICOM networking here: it sees arrays, labels and provenance records.
"""

__version__ = "0.1.0"
