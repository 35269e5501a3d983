"""Registry of pipelines (trainer.pipeline)."""
from rllava.registry import Registry

PIPELINES = Registry("pipeline", "what one training step does (trainer.pipeline)")
