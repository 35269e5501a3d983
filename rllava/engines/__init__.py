"""Training engines (local, fsdp2), rollout engines (hf, vllm) and the optimizers they step."""
from rllava.engines import fsdp2, hf_rollout, local, vllm_rollout  # noqa: F401  (fill the registries)
from rllava.engines.optimizers import OPTIMIZERS
from rllava.engines.registry import ROLLOUT_ENGINES, TRAIN_ENGINES

__all__ = ["OPTIMIZERS", "ROLLOUT_ENGINES", "TRAIN_ENGINES"]
