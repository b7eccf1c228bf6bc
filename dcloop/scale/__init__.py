"""Scale-out: DDP helpers, sequential folds as separate runs, the merge step, sweeps."""

__all__ = ["DistributedEpochSampler", "broadcast_result", "train_sampler"]


def __getattr__(name: str):
    """The DDP helpers, imported on first use: ``dcloop-merge --help`` (whose module lives
    here) must not load torch first."""
    if name in __all__:
        from dcloop.scale import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
