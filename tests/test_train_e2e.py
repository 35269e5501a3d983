"""End to end on a tiny Qwen2-VL and the counting task: RL and SFT steps, outputs, robustness."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rllava.config import load_config
from rllava.pipelines.run import run_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=40, seed=0)


def base_overrides(model: Path, data: Path, out: Path, name: str = "run") -> list[str]:
    return [f"model.path={model}", f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
            "data.template={{ prompt }} Answer with a number.", "data.batch_size=2", "data.max_val_samples=4",
            "rollout.n=4", "rollout.max_new_tokens=6", "actor.lr=1e-3", "reward.functions={count: 1.0}",
            f"trainer.output_dir={out}", f"trainer.experiment_name={name}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl,tensorboard]", "trainer.total_steps=3"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_grpo_writes_every_output(tiny_model_factory, counting_data, tmp_path):
    from transformers import AutoModelForImageTextToText

    model = tiny_model_factory("qwen2_vl")
    result = run_experiment(load_config(None, base_overrides(model, counting_data, tmp_path)))
    run = Path(result["run_dir"])
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/mean", "actor/grad_norm", "actor/entropy", "response/length_mean", "time/step", "time/rollout",
                "time/update", "reward/zero_std_frac"):
        assert all(key in r for r in rows[1:]), key
    for r in rows[1:]:  # GRPO's advantages are all 0 exactly when every group's rewards are alike
        assert (r["reward/zero_std_frac"] == 1.0) == (r["adv/abs_mean"] == 0.0)
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]
    assert (run / "config.yaml").exists() and (run / "curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    assert (run / "samples.jsonl").read_text().count("\n") >= 2
    final = Path(result["final_model"])
    loaded = AutoModelForImageTextToText.from_pretrained(final)  # the checkpoint is a plain HF folder
    assert loaded.num_parameters() > 0
    # the update really changed the weights
    before, after = model_weights(model), model_weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_zero_std_frac_by_hand():
    from rllava.data.types import Episode, Prompt
    from rllava.pipelines.rlvr import response_metrics

    prompt = Prompt(input_ids=[1])
    rewards = {0: [1.0, 1.0, 1.0], 1: [0.0, 1.0, 0.0], 2: [0.5, 0.5], 3: [0.25]}  # group 3: one rollout, no spread
    episodes = [Episode(prompt, [2], [1], reward=r, group_id=g) for g, rs in rewards.items() for r in rs]
    assert response_metrics(episodes)["reward/zero_std_frac"] == pytest.approx(2 / 3)
    assert "reward/zero_std_frac" not in response_metrics(episodes[-1:])  # no group of two or more


def test_sft_lowers_nll(tiny_model_factory, counting_data, tmp_path):
    over = base_overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "sft")
    over += ["trainer.pipeline=sft", "data.batch_size=8", "data.shuffle=false", "trainer.total_steps=6",
             "trainer.val_before_train=false", "actor.lr=3e-3"]
    run_experiment(load_config(None, over))
    losses = [r["actor/loss"] for r in read_metrics(tmp_path / "sft") if "actor/loss" in r]
    # four batches of 8 over a 32-row train set: steps 1 and 5 see the same rows
    assert losses[4] < 0.8 * losses[0], losses


INTERRUPT_REWARD = '''
import os
import signal
from pathlib import Path

def reward(response, answer, **row):
    """Counts its calls; at call KILL_AT SIGKILLs its own process (a crash mid-step), at call STOP_AT sends it
    SIGTERM (a cluster preempting the job)."""
    counter = Path(os.environ["COUNTER"])
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n == int(os.environ.get("KILL_AT", "0")):
        os.kill(os.getpid(), 9)
    if n == int(os.environ.get("STOP_AT", "0")):
        os.kill(os.getpid(), signal.SIGTERM)
    return float(response.strip() == answer)
'''
CALLS_PER_STEP = 2 * 4  # the reward's calls in a step: 2 prompts x 4 samples


@pytest.fixture(scope="module")
def interrupted_runs(tiny_model_factory, counting_data, tmp_path_factory):
    """`train(name, **env) -> CompletedProcess` of `rllava train` (4 steps, checkpoints at 2 and 4), and a straight run."""
    root = tmp_path_factory.mktemp("interrupted")
    plugin = root / "interrupt_reward.py"
    plugin.write_text(INTERRUPT_REWARD)
    over = base_overrides(tiny_model_factory("qwen2_vl"), counting_data, root)
    over = [o for o in over if not o.startswith(("reward.", "data.val_files", "trainer.total_steps"))]
    over += [f"reward.functions={{'{plugin}:reward': 1.0}}", "trainer.total_steps=4", "trainer.save_freq=2",
             "rollout.temperature=1.0", "actor.ppo_epochs=2", "actor.mini_batch_size=4"]

    def train(name: str, **env: int) -> subprocess.CompletedProcess:
        env = {**os.environ, "COUNTER": str(root / f"{name}.count"), **{k: str(v) for k, v in env.items()}}
        return subprocess.run([sys.executable, "-m", "rllava", "train", *over, f"trainer.experiment_name={name}"],
                              env=env, capture_output=True, text=True, cwd=root)

    straight = train("straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    return train, root


def assert_same_run(root: Path, name: str) -> None:
    """Run `name` ended with the straight run's final weights and logged the same metrics."""
    a = model_weights(root / "straight" / "checkpoints" / "step_4" / "model")
    b = model_weights(root / name / "checkpoints" / "step_4" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]  # noqa: E731
    assert strip(read_metrics(root / "straight")) == strip(read_metrics(root / name))


def test_resume_after_sigkill_is_exact(interrupted_runs):
    train, root = interrupted_runs
    killed = train("killed", KILL_AT=2 * CALLS_PER_STEP + 3)  # in step 3, after the step-2 checkpoint
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (root / "killed" / "checkpoints").iterdir()) == ["step_2"]
    resumed = train("killed")  # trainer.resume=auto picks step_2 up
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(root, "killed")


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(interrupted_runs):
    """Preemption: SIGTERM mid-step finishes that step, checkpoints it and exits 143; the rerun ends like a straight run."""
    train, root = interrupted_runs
    stopped = train("stopped", STOP_AT=2 * CALLS_PER_STEP + 3)  # during step 3's scoring: not a save_freq step
    assert stopped.returncode == 128 + 15, stopped.stderr[-2000:]
    assert "stopped by SIGTERM after step 3" in stopped.stderr
    assert sorted(p.name for p in (root / "stopped" / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert read_metrics(root / "stopped")[-1]["step"] == 3  # step 3 was finished, not dropped
    assert train("stopped").returncode == 0  # trainer.resume=auto
    assert_same_run(root, "stopped")


def test_time_based_checkpoints(short_counting_run):
    """trainer.save_every_min=0: every step is overdue, so every step is saved (keep_last prunes the rest)."""
    from rllava.pipelines.checkpoint import list_checkpoints

    result = run_experiment(load_config(None, short_counting_run("trainer.save_every_min=0", "trainer.save_freq=0",
                                                                 "trainer.keep_last=5", "trainer.total_steps=3")))
    assert [step for step, _ in list_checkpoints(Path(result["run_dir"]))] == [1, 2, 3]


FLAKY_REWARD = '''
def reward(response, answer, **row):
    if row.get("id", 0) % 3 == 0:
        raise RuntimeError("reward server down")
    if row.get("id", 0) % 3 == 1:
        return float("nan")
    return 1.0
'''

NAN_LOSS = '''
import torch
from rllava.algorithms import POLICY_LOSSES

@POLICY_LOSSES.register("nan_loss", description="always NaN (test)")
def nan_loss(logp, old_logp, adv, mask, cfg, **extra):
    return (logp * float("nan")).sum(), {}
'''


def test_reward_errors_are_counted_and_scored(tiny_model_factory, counting_data, tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(FLAKY_REWARD)
    over = base_overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "flaky")
    over = [o for o in over if not o.startswith("reward.")] + [f"reward.functions={{'{plugin}:reward': 1.0}}",
                                                               "reward.on_error=-1.0", "trainer.total_steps=2"]
    run_experiment(load_config(None, over))
    rows = read_metrics(tmp_path / "flaky")
    assert rows[-1]["reward/errors_total"] > 0
    assert all(-1.0 <= r["reward/mean"] <= 1.0 for r in rows[1:])


def test_nonfinite_loss_skips_update(tiny_model_factory, counting_data, tmp_path):
    plugin = tmp_path / "nan_loss.py"
    plugin.write_text(NAN_LOSS)
    model = tiny_model_factory("qwen2_vl")
    over = base_overrides(model, counting_data, tmp_path, "nan") + [
        f"plugins=[{plugin}]", "algorithm.policy_loss=nan_loss", "trainer.total_steps=2"]
    result = run_experiment(load_config(None, over))
    rows = read_metrics(tmp_path / "nan")
    assert [r["actor/skipped"] for r in rows[1:]] == [1.0, 1.0]
    before, after = model_weights(model), model_weights(Path(result["final_model"]))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_grpo_update_moves_logprobs_toward_advantage(tiny_model_factory, counting_data, tmp_path):
    """One on-policy GRPO step raises sum_i A_i * log pi(y_i): the first-order policy-gradient guarantee."""
    from rllava.algorithms import ADVANTAGES
    from rllava.data.types import Batch
    from rllava.pipelines.run import build_context

    over = base_overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path) + [
        "data.batch_size=4", "rollout.n=4", "actor.lr=1e-5", "data.val_files="]
    cfg = load_config(None, over)
    torch.manual_seed(0)
    ctx = build_context(cfg, tmp_path / "run", None)
    episodes = ctx.rollout.generate(ctx.loader.next_batch(), ctx.rollout.train_sampling())
    for i, e in enumerate(episodes):  # synthetic rewards: a fixed pattern within every group
        e.reward = float(i % 4 in (0, 3))
    batch = Batch.from_episodes(episodes, ctx.pad_id)
    batch.advantages, batch.returns = ADVANTAGES.get("grpo")(batch, cfg.algorithm)
    before = ctx.actor.logprobs(batch)
    ctx.actor.update(batch)
    after = ctx.actor.logprobs(batch)
    seq_delta = ((after - before) * batch.response_mask).sum(1)
    adv = batch.advantages[:, 0]
    assert float((adv * seq_delta).sum()) > 0
    assert float(seq_delta[adv > 0].mean()) > float(seq_delta[adv < 0].mean())


def test_critic_pretraining_holds_the_actor(short_counting_run, tiny_model_factory):
    """PPO with critic.pretrain_steps=2: steps 1-2 update the critic alone, step 3 the actor too."""
    from rllava.config import ConfigError

    over = short_counting_run("algorithm.adv_estimator=gae", "critic.pretrain_steps=2", "trainer.total_steps=3",
                              "trainer.save_freq=1", "trainer.keep_last=3", "trainer.experiment_name=warm")
    run = Path(run_experiment(load_config(None, over))["run_dir"])
    rows = [r for r in read_metrics(run) if "critic/value_loss" in r]
    assert [("actor/loss" in r) for r in rows] == [False, False, True]
    initial = model_weights(tiny_model_factory("qwen2_vl"))
    for step, moved in ((2, False), (3, True)):
        w = model_weights(run / "checkpoints" / f"step_{step}" / "model")
        assert any(not torch.equal(w[k], initial[k]) for k in initial) == moved, step
    with pytest.raises(ConfigError, match="no critic"):
        run_experiment(load_config(None, short_counting_run("critic.pretrain_steps=2")))


def test_remax_with_dynamic_sampling_baselines_every_round(short_counting_run):
    """ReMax + DAPO's filter: the extra sampling rounds get their greedy baselines too (they used to crash)."""
    over = short_counting_run("trainer.experiment_name=remax_dapo", "algorithm.adv_estimator=remax",
                              "algorithm.group_filter=dapo_nonuniform", "algorithm.max_filter_tries=2",
                              "rollout.n=2", "trainer.total_steps=2")
    run = Path(run_experiment(load_config(None, over))["run_dir"])
    rows = [r for r in read_metrics(run) if "filter/rollout_rounds" in r]
    assert len(rows) == 2 and max(r["filter/rollout_rounds"] for r in rows) > 1  # extra rounds did run
    assert all("reward/greedy_baseline" in r for r in rows)


def test_update_metrics_do_not_depend_on_micro_batching(short_counting_run, tiny_model_factory, tmp_path):
    """One sequence per micro-batch or all in one, two epochs (so ratios leave 1 and some tokens clip), averaged
    per sequence over responses of different lengths: the loss and the token-level metrics (clip fractions,
    approx KL, ratio) are the same (token metrics used to be weighted by sequences)."""
    import shutil

    model = tmp_path / "model"  # every third token id ends a response: lengths vary
    shutil.copytree(tiny_model_factory("qwen2_vl"), model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": list(range(0, 1024, 3))}))
    rows = {}
    for budget in (8, 4096):
        over = short_counting_run(f"trainer.experiment_name=m{budget}", f"actor.micro_token_budget={budget}",
                                  f"model.path={model}",
                                  "algorithm.loss_agg_mode=seq-mean-token-mean", "actor.ppo_epochs=2", "actor.lr=3e-2",
                                  "algorithm.clip_ratio_low=0.02", "algorithm.clip_ratio_high=0.02",
                                  "reward.functions={count: 1.0, number_format: 1.0}", "trainer.total_steps=1")
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[budget] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/loss" in ln][-1]
    small, whole = rows[8], rows[4096]
    assert whole["response/length_max"] > whole["response/length_mean"]  # lengths differ
    assert whole["actor/approx_kl"] > 0 and whole["actor/clip_frac_low"] + whole["actor/clip_frac_high"] > 0
    for key in ("actor/loss", "actor/entropy", "actor/approx_kl", "actor/ratio_mean", "actor/clip_frac_low",
                "actor/clip_frac_high"):
        assert small[key] == pytest.approx(whole[key], rel=2e-3, abs=1e-6), key


def test_positive_example_loss(short_counting_run, tmp_path):
    """VAPO's LM loss on well-rewarded rollouts: logged as the NLL per positive token, it changes the update,
    and the loss and gradient do not depend on micro-batching (its denominator is the step's positive tokens)."""
    plugin = tmp_path / "varied.py"
    plugin.write_text("def reward(response, answer, **row):\n    return len(set(response)) / 10.0\n")
    rows = {}
    for name, extra in {"off": ["algorithm.positive_nll_coef=0"], "small": ["actor.micro_token_budget=8"],
                        "whole": ["actor.micro_token_budget=4096"]}.items():
        over = short_counting_run(f"trainer.experiment_name=p{name}", f"reward.functions={{'{plugin}:reward': 1.0}}",
                                  "algorithm.positive_nll_coef=0.5", "algorithm.positive_reward_min=0.4",
                                  "algorithm.entropy_coef=0", "trainer.total_steps=1", *extra)
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[name] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/loss" in ln][-1]
    assert "actor/positive_nll" not in rows["off"] and rows["whole"]["actor/positive_nll"] > 0
    assert rows["whole"]["actor/grad_norm"] != pytest.approx(rows["off"]["actor/grad_norm"], rel=1e-4)
    for key in ("actor/positive_nll", "actor/loss", "actor/grad_norm"):
        assert rows["small"][key] == pytest.approx(rows["whole"][key], rel=1e-4, abs=1e-6), key


def test_skipping_zero_advantage_rows_leaves_the_update_as_it_is(tiny_model_factory, counting_data, tmp_path):
    """actor.skip_zero_advantage: GRPO groups whose rewards are all equal have advantage 0 and are left out of the
    forward and backward. The gradient is the one the whole mini-batch gives (to float rounding); over two epochs of
    two mini-batches the weights follow; a later step whose rows are all skipped still takes AdamW's momentum step."""
    from rllava.algorithms import ADVANTAGES
    from rllava.config import ConfigError
    from rllava.data.types import Batch
    from rllava.pipelines.run import build_context, check_settings

    over = base_overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path) + [
        "data.batch_size=4", "rollout.n=4", "data.val_files=", "actor.ppo_epochs=2", "actor.mini_batch_size=8"]
    results = {}
    for skip in (False, True):
        cfg = load_config(None, over + [f"actor.skip_zero_advantage={str(skip).lower()}"])
        torch.manual_seed(0)
        ctx = build_context(cfg, tmp_path / f"run{skip}", None)
        episodes = ctx.rollout.generate(ctx.loader.next_batch(), ctx.rollout.train_sampling())
        grads, step = [], ctx.engine.step

        def recording_step(step=step, grads=grads, model=ctx.model):
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step()

        ctx.engine.step = recording_step

        def batch_with(rewards, ctx=ctx, episodes=episodes, cfg=cfg):
            for e, r in zip(episodes, rewards):
                e.reward = r
            b = Batch.from_episodes(episodes, ctx.pad_id)
            b.advantages, b.returns = ADVANTAGES.get("grpo")(b, cfg.algorithm)
            b.old_logp = ctx.actor.logprobs(b)
            return b

        def weights(model=ctx.model):
            return torch.cat([p.detach().flatten().clone() for p in model.parameters()])

        start = weights()
        # Groups 0 and 2 are uniform (all 1, all 0): half of the rows have no advantage.
        first = ctx.actor.update(batch_with([1.0] * 4 + [1.0, 0.0, 0.0, 1.0] + [0.0] * 4 + [0.0, 1.0, 1.0, 1.0]))
        middle = weights()
        second = ctx.actor.update(batch_with([0.0] * 16))  # every row skipped
        results[skip] = (first, second, grads, middle - start, weights() - middle)
    (f0, s0, g0, d0, m0), (f1, s1, g1, d1, m1) = results[False], results[True]
    assert f1["actor/skipped_rows"] == pytest.approx(0.5) and s1["actor/skipped_rows"] == 1.0
    assert "actor/skipped_rows" not in f0 and s0["actor/grad_norm"] == s1["actor/grad_norm"] == 0.0
    assert len(g0) == len(g1) == 8  # (2 epochs x 2 mini-batches) x 2 updates: no optimizer step is dropped
    assert g0[0].keys() == g1[0].keys()
    for n, g in g0[0].items():  # the first step: the same weights, so the same gradient
        assert float((g1[0][n] - g).norm()) <= 1e-4 * float(g.norm()) + 1e-9, n
    assert all(float(g.abs().max()) == 0.0 for step in g0[4:] + g1[4:] for g in step.values())  # zero advantages
    assert float((d1 - d0).norm()) <= 1e-2 * float(d0.norm())
    assert float(m0.norm()) > 0 and float((m1 - m0).norm()) <= 1e-2 * float(m0.norm())  # AdamW momentum, both ways
    assert f1["actor/loss"] == pytest.approx(f0["actor/loss"], rel=1e-4, abs=1e-7)
    assert f1["actor/grad_norm"] == pytest.approx(f0["actor/grad_norm"], rel=1e-3)
    # Only where leaving the rows out changes nothing.
    for extra, reason in (("algorithm.entropy_coef=0.01", "entropy_coef"), ("algorithm.policy_loss=kl_cov", "kl_cov"),
                          ("algorithm.kl_coef=0.1", "kl_coef with kl_in=loss")):
        with pytest.raises(ConfigError, match=f"actor.skip_zero_advantage.*{reason}"):
            check_settings(load_config(None, over + ["actor.skip_zero_advantage=true", extra]))
    check_settings(load_config(None, over + ["actor.skip_zero_advantage=true", "algorithm.kl_coef=0.1",
                                             "algorithm.kl_in=reward", "algorithm.policy_loss=gspo"]))


# Varies with the response on even-numbered prompts and is 0 on odd ones: about half the groups are uniform.
EVEN_PROMPTS_REWARD = '''
def reward(response, answer, **row):
    return len(set(response)) / 10.0 if int(row["id"]) % 2 == 0 else 0.0
'''


def test_skipped_rows_need_no_old_logprobs(short_counting_run, tmp_path, monkeypatch):
    """With two mini-batches a step needs old log-probs; with actor.skip_zero_advantage the advantages come first
    and that pass runs only the rows an update will run. The step's update is the same."""
    from rllava.roles.actor import Actor

    plugin = tmp_path / "even_prompts.py"
    plugin.write_text(EVEN_PROMPTS_REWARD)
    no_grad_rows: dict[str, int] = {}
    forward = Actor.forward

    def counting_forward(self, batch, with_entropy):
        if not torch.is_grad_enabled():
            no_grad_rows[self.cfg.trainer.experiment_name] = no_grad_rows.get(self.cfg.trainer.experiment_name, 0) + len(batch)
        return forward(self, batch, with_entropy)

    monkeypatch.setattr(Actor, "forward", counting_forward)
    rows = {}
    for name, skip in (("plain", "false"), ("skip", "true")):
        over = short_counting_run(f"trainer.experiment_name={name}", f"actor.skip_zero_advantage={skip}",
                                  "algorithm.entropy_coef=0", f"reward.functions={{'{plugin}:reward': 1.0}}",
                                  "data.batch_size=4", "actor.mini_batch_size=8", "trainer.total_steps=1")
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[name] = read_metrics(run)[-1]
    plain, skip = rows["plain"], rows["skip"]
    assert plain["reward/mean"] == skip["reward/mean"] > 0  # the same rollouts
    assert 0 < skip["actor/skipped_rows"] < 1
    assert no_grad_rows["plain"] == 16 and no_grad_rows["skip"] == round(16 * (1 - skip["actor/skipped_rows"]))
    assert skip["actor/loss"] == pytest.approx(plain["actor/loss"], rel=1e-4, abs=1e-7)
    assert skip["actor/grad_norm"] == pytest.approx(plain["actor/grad_norm"], rel=1e-4)


@pytest.mark.parametrize("extra, per_step", [
    ([], 2),  # 2 prompts x 4 rollouts, mini-batches of 4
    (["trainer.pipeline=sft", "data.response_template={{ answer }}"], 1),  # SFT trains on the 2 prompts' rows
    (["algorithm.demonstrations=mix", "algorithm.policy_loss=luffy", "data.response_template={{ answer }}"], 3),  # 2 x (4 + 1)
])
def test_the_lr_schedule_spans_the_optimizer_steps_the_run_takes(short_counting_run, extra, per_step):
    """A linear decay over the run's optimizer steps: the last update runs at lr / (its count), whatever the
    pipeline trains on (it used to count batch_size x n rows for SFT and for demonstrations too)."""
    import json
    from pathlib import Path

    from rllava.config import load_config
    from rllava.pipelines.run import optimizer_steps_per_step, run_experiment

    cfg = load_config(None, short_counting_run("actor.mini_batch_size=4", "actor.lr_scheduler=linear", *extra))
    assert optimizer_steps_per_step(cfg) == per_step
    run = Path(run_experiment(cfg)["run_dir"])
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["actor/lr"] for r in rows if "actor/lr" in r]  # each step's mean over its optimizer steps
    total = 2 * per_step
    expected = [sum(1 - k / total for k in range(s * per_step, (s + 1) * per_step)) / per_step * 1e-3 for s in (0, 1)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("loss, ratio", [("kl_cov", "algorithm.kl_cov_ratio=0.05"), ("clip_cov", "algorithm.clip_cov_ratio=0.05")])
def test_covariance_losses_choose_tokens_over_the_step_not_the_micro_batch(short_counting_run, loss, ratio):
    """Clip-Cov and KL-Cov choose their tokens by covariance over the step's batch, so one sequence per micro-batch
    and all in one update alike (the choice used to be made per micro-batch: KL-Cov then chose no token at all
    in micro-batches under 1 / kl_cov_ratio tokens)."""
    rows = {}
    for budget in (8, 4096):
        over = short_counting_run(f"trainer.experiment_name={loss}{budget}", f"actor.micro_token_budget={budget}",
                                  f"algorithm.policy_loss={loss}", ratio, "actor.ppo_epochs=2", "actor.lr=3e-2",
                                  "algorithm.clip_cov_lb=-100", "algorithm.clip_cov_ub=100",
                                  "reward.functions={count: 1.0, number_format: 1.0}", "trainer.total_steps=1")
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[budget] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/loss" in ln][-1]
    frac = f"actor/{loss}_frac"
    assert rows[4096][frac] > 0
    for key in ("actor/loss", frac, "actor/approx_kl"):
        assert rows[8][key] == pytest.approx(rows[4096][key], rel=2e-3, abs=1e-6), key


def test_data_chat_template_reaches_the_exported_checkpoint(short_counting_run, tmp_path):
    """data.chat_template (the template a run trains with) is the processor's own, so the exported checkpoint
    carries it: serving or evaluating the checkpoint formats prompts as training did."""
    from transformers import AutoProcessor

    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {% for c in m['content'] %}"
                        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                        "{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    result = run_experiment(load_config(None, short_counting_run(f"data.chat_template={template}", "trainer.total_steps=1",
                                                                 "trainer.save_freq=1")))
    exported = AutoProcessor.from_pretrained(Path(result["run_dir"]) / "checkpoints" / "step_1" / "model")
    assert exported.chat_template == template.read_text()
