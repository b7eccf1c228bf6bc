# shim: removed once datasets/audio/datamodule import dcloop._checks
from dcloop._checks import as_label_array, check_label_range, check_num_classes, preview

__all__ = ["as_label_array", "check_label_range", "check_num_classes", "preview"]
