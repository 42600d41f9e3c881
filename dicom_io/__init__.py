"""Everything that speaks DICOM: listener/sender, study store, annotations in, results out.

No torch here; models are reached only through plain arrays and records in ``service``.
"""
