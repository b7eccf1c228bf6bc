"""People in the loop: relabel queue, corrections back in, several annotators, report.

Modules: :mod:`~dcloop.people.export` (relabel queue CSV + Label Studio JSON),
:mod:`~dcloop.people.corrections` (import → new label file with provenance),
:mod:`~dcloop.data.labelfile` (the ``data.labels`` file format),
:mod:`~dcloop.people.multiannotator` (consensus via ``cleanlab.multiannotator`` and
majority vote), :mod:`~dcloop.people.report` (``report.html``), :mod:`~dcloop.people.cli`.
"""

# Imported on first use (PEP 562), so that ``dcloop-export --help`` does not load torch.
_WHERE = {
    "LABEL_FILE_COLUMNS": "dcloop.data.labelfile",
    "STATUSES": "dcloop.data.labelfile",
    "LabelOverride": "dcloop.data.labelfile",
    "apply_label_file": "dcloop.data.labelfile",
    "attach_label_file": "dcloop.data.labelfile",
    "read_label_file": "dcloop.data.labelfile",
    "base_labels": "dcloop.people.corrections",
    "import_corrections": "dcloop.people.corrections",
    "export_queue": "dcloop.people.export",
    "relabel_queue": "dcloop.people.export",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dcloop.people' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)


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
