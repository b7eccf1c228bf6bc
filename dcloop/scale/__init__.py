"""Scale-out: DDP helpers, sequential folds as separate runs, the merge step, sweeps."""

from dcloop.scale.distributed import DistributedEpochSampler, broadcast_result, train_sampler

__all__ = ["DistributedEpochSampler", "broadcast_result", "train_sampler"]
