"""Example plugin: a new advantage estimator, registered from outside the package.

Use it with `plugins: [examples/plugins/my_advantage.py]` and `algorithm.adv_estimator: median_baseline`.
"""
import torch

from rllava.algorithms import ADVANTAGES


@ADVANTAGES.register("median_baseline")
def median_baseline(batch, cfg):
    """r - group median (the lower middle value for even groups), broadcast over the response."""
    scores = batch.token_rewards.sum(-1)
    baseline = torch.empty_like(scores)
    for g in batch.group_ids.unique():
        members = batch.group_ids == g
        baseline[members] = scores[members].median()  # torch.median: lower median
    adv = (scores - baseline)[:, None] * batch.response_mask
    return adv, adv
