"""Training engines (local, fsdp2) and rollout engines (hf, vllm)."""
from rllava.engines import fsdp2, hf_rollout, local, vllm_rollout  # noqa: F401  (fill the registries)
from rllava.engines.registry import ROLLOUT_ENGINES, TRAIN_ENGINES

__all__ = ["ROLLOUT_ENGINES", "TRAIN_ENGINES"]
