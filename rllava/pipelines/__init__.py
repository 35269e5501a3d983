"""The training loop, its pipelines and hooks, checkpoints, logging and evaluation."""
from rllava.pipelines import agentic, agentic_sft, rlvr, sft  # noqa: F401  (fill the registry)
from rllava.pipelines.registry import PIPELINES

__all__ = ["PIPELINES"]
