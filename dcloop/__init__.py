"""dcloop: confident learning inside the Lightning training loop."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``dcloop.load_model``: imported on first use, so ``import dcloop`` stays light."""
    if name == "load_model":
        from dcloop.kept.model import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
