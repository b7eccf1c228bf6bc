"""People in the loop: relabel queue, corrections back in, several annotators, report.

Modules: :mod:`~dcloop.people.export` (relabel queue CSV + Label Studio JSON),
:mod:`~dcloop.people.corrections` (import → new label file with provenance),
:mod:`~dcloop.data.labelfile` (the ``data.labels`` file format),
:mod:`~dcloop.people.multiannotator` (consensus via ``cleanlab.multiannotator`` and
majority vote), :mod:`~dcloop.people.report` (``report.html``), :mod:`~dcloop.people.cli`.
"""

from dcloop.data.labelfile import (
    LABEL_FILE_COLUMNS,
    STATUSES,
    LabelOverride,
    apply_label_file,
    attach_label_file,
    read_label_file,
)
from dcloop.people.corrections import base_labels, import_corrections
from dcloop.people.export import export_queue, relabel_queue

__all__ = [
    "LABEL_FILE_COLUMNS",
    "STATUSES",
    "LabelOverride",
    "apply_label_file",
    "attach_label_file",
    "base_labels",
    "export_queue",
    "import_corrections",
    "read_label_file",
    "relabel_queue",
]
