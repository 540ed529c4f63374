"""Whether a live model's parameters are sharded across processes (FSDP, DeepSpeed ZeRO-3, DTensor).

A sharded parameter is only a slice of the weight on each process: its spectrum is not the
weight's. Tracking then falls back to analyzing the full checkpoints the Trainer saves.
"""

from __future__ import annotations

from torch import nn


def sharded_kind(model: nn.Module) -> str | None:
    """``"FSDP"``, ``"DeepSpeed ZeRO-3"``, ``"DTensor"`` when parameters are sharded, else None."""
    for module in model.modules():
        names = {cls.__name__ for cls in type(module).__mro__}
        if "FullyShardedDataParallel" in names or "FSDPModule" in names:
            return "FSDP"
    dtensor = _dtensor_type()
    for param in model.parameters():
        if hasattr(param, "ds_id"):  # set by ZeRO-3 partitioning only (not ZeRO-1/2)
            return "DeepSpeed ZeRO-3"
        if type(param).__name__ == "FlatParameter":
            return "FSDP"
        if dtensor is not None and isinstance(param, dtensor):
            return "DTensor"
    return None


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except (ImportError, RuntimeError):  # torch built without distributed support
        return None
    return DTensor
