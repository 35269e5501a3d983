"""Registries of training and rollout engines (chosen by actor.strategy and rollout.engine)."""
from rllava.registry import Registry

TRAIN_ENGINES = Registry("train_engine", "where and how the model is trained (actor.strategy)")
ROLLOUT_ENGINES = Registry("rollout_engine", "what generates the episodes (rollout.engine)")
