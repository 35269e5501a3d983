"""`rllava train` under torchrun: 2 ranks (gloo, CPU) with actor.strategy=fsdp2, end to end.

Three launches: an RLVR run (rollouts, reference, mini-batches, validation, checkpoints), a resume of
it from its step-3 checkpoint, and an SFT step compared with the same step in one process.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import start_torchrun, wait_torchrun
from safetensors.torch import load_file

from rllava.config import load_config
from rllava.pipelines.run import run_experiment

# Gives every response a reward that varies with its text, so RL steps have non-zero gradients.
SIGNAL_REWARD = '''
def reward(response, answer, **row):
    return len(set(response)) / 10.0
'''
# SFT targets of different lengths ("3 x x"), so the ranks get different numbers of micro-batches.
SFT_TARGET = "data.response_template={{ answer }}{% for i in range(5 - answer|int) %} x{% endfor %}"


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=24, seed=0)


def common(model: Path, data: Path, out: Path, name: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
            "data.template={{ prompt }} Answer with a number.", "data.max_val_samples=3", "actor.lr=1e-3",
            f"trainer.output_dir={out}", f"trainer.experiment_name={name}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]", "trainer.device=cpu"]


def torchrun_train(overrides: list[str], log: Path, timeout: float = 120) -> None:
    """`torchrun --nproc_per_node=2 -m rllava train ... actor.strategy=fsdp2`; stops both ranks on failure."""
    proc = start_torchrun(["-m", "rllava", "train", *overrides, "actor.strategy=fsdp2"], log)
    wait_torchrun(proc, log, timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))}


@pytest.fixture(scope="module")
def rl_runs(tiny_model_factory, counting_data, tmp_path_factory):
    """A 4-step RLVR run saving at steps 3 and 4, then a run resumed from its step-3 checkpoint. The KL reference
    is reset to the policy after steps 2 and 4 (gathered from the shards); the resume must restore it."""
    out = tmp_path_factory.mktemp("dist_rl")
    plugin = out / "signal_reward.py"
    plugin.write_text(SIGNAL_REWARD)
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, out, "straight"),
            f"reward.functions={{'{plugin}:reward': 1.0}}", "data.batch_size=2", "data.val_batch_size=1",
            "rollout.n=4", "rollout.max_new_tokens=6", "actor.ppo_epochs=2", "actor.mini_batch_size=4",
            "algorithm.kl_coef=0.05", "reference.sync_steps=2", "trainer.total_steps=4", "trainer.save_freq=3"]
    torchrun_train(over, out / "straight.log")
    resumed = [o.replace("experiment_name=straight", "experiment_name=resumed") for o in over]
    torchrun_train([*resumed, f"trainer.resume={out / 'straight' / 'checkpoints' / 'step_3'}"], out / "resumed.log")
    return out / "straight", out / "resumed"


def test_two_rank_rl_run_writes_outputs_once(rl_runs, tiny_model_factory):
    from transformers import AutoModelForImageTextToText

    run, _ = rl_runs
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # rank 1 logs nothing
    assert all("actor/kl_loss" in r and r["actor/grad_norm"] > 0 for r in rows[1:])
    # The KL reference is reset to the (gathered) policy after steps 2 and 4, and checkpointed.
    ckpts = {step: run / "checkpoints" / f"step_{step}" for step in (3, 4)}
    refs = {step: load_file(str(c / "reference.safetensors")) for step, c in ckpts.items()}
    policy = {step: AutoModelForImageTextToText.from_pretrained(c / "model").state_dict() for step, c in ckpts.items()}
    shared = sorted(set(refs[4]) & set(policy[4]))
    assert len(shared) == len(refs[4]) and len(shared) >= len(policy[4]) - 1  # every weight (a tied one stored once)
    assert all(torch.equal(refs[4][k], policy[4][k]) for k in shared)  # reset after step 4
    assert any(not torch.equal(refs[3][k], policy[3][k]) for k in shared)  # step 3 trained past the step-2 reset
    assert any(not torch.equal(refs[3][k], refs[4][k]) for k in shared)  # and the reference moved again at step 4
    assert rows[1]["response/tokens"] == 2 * 4 * 6  # summed over ranks: 2 prompts x 4 samples x 6 tokens (never EOS)
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_4"]
    ckpt = run / "checkpoints" / "step_4"
    assert sorted(p.name for p in (ckpt / "engine").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank samples its own
    # The exported folder is a plain HF model, loadable here, with trained weights.
    trained = AutoModelForImageTextToText.from_pretrained(ckpt / "model").state_dict()
    initial = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("qwen2_vl")).state_dict()
    assert trained.keys() == initial.keys() and any(not torch.equal(initial[k], trained[k]) for k in initial)


def test_two_rank_resume_equals_straight_run(rl_runs):
    straight, resumed = rl_runs
    a = load_file(str(straight / "checkpoints" / "step_4" / "model" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_4" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(resumed)
    assert [r["step"] for r in rows] == [4]
    assert without_times(rows[0]) == without_times(read_metrics(straight)[-1])


# SIGNAL_REWARD's reward, and on rank 1 only a SIGTERM to its own process at its 8th call (in step 2), once.
PREEMPT_REWARD = '''
import os, signal
from pathlib import Path
CALLS = [0]
DONE = Path(__file__).with_suffix(".signalled")

def reward(response, answer, **row):
    CALLS[0] += 1
    if os.environ.get("RANK") == "1" and CALLS[0] == 8 and not DONE.exists():
        DONE.touch()
        os.kill(os.getpid(), signal.SIGTERM)
    return len(set(response)) / 10.0
'''


def test_two_rank_preemption_saves_on_every_rank(rl_runs, tmp_path):
    """A stop signal that reaches one rank only: both ranks finish the step, save it together, and stop."""
    straight, _ = rl_runs
    plugin = tmp_path / "preempt_reward.py"
    plugin.write_text(PREEMPT_REWARD)
    over = yaml_overrides(straight / "config.yaml", tmp_path, f"{plugin}:reward")
    proc = start_torchrun(["-m", "rllava", "train", *over], tmp_path / "stopped.log")
    proc.wait(timeout=120)
    log = (tmp_path / "stopped.log").read_text(errors="replace")
    assert proc.returncode != 0 and "stopped by SIGTERM after step" in log, log[-3000:]
    saved = sorted(p.name for p in (tmp_path / "preempted" / "checkpoints").iterdir())
    assert saved and saved[-1] != "step_4", saved
    assert sorted(p.name for p in (tmp_path / "preempted" / "checkpoints" / saved[-1] / "engine").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # both ranks wrote their shard
    # Resuming from it is a plain resume (test_two_rank_resume_equals_straight_run; the exactness after a stop
    # signal is checked in one process in test_train_e2e).


def yaml_overrides(config: Path, out: Path, reward: str) -> list[str]:
    """The straight run's resolved config as overrides, in a new run folder and with another reward file."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"].update(output_dir=str(out), experiment_name="preempted")
    cfg["reward"]["functions"] = {reward: 1.0}
    return [f"{sec}.{key}={json.dumps(value)}" for sec, body in cfg.items() if isinstance(body, dict)
            for key, value in body.items()] + [f"plugins={json.dumps(cfg.get('plugins', []))}"]


def test_two_ranks_match_one_process(tiny_model_factory, counting_data, tmp_path):
    """Same global batch: the FSDP2 ranks' loss, gradient norm and (greedy) validation equal one process's."""
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "one"), "trainer.pipeline=sft",
            SFT_TARGET, "data.batch_size=4", "data.shuffle=false", "data.val_batch_size=2",
            "actor.micro_token_budget=75", "rollout.max_new_tokens=8", "trainer.total_steps=1"]
    run_experiment(load_config(None, over))
    torchrun_train([o.replace("experiment_name=one", "experiment_name=two") for o in over], tmp_path / "two.log")
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert two[1]["response/tokens"] == one[1]["response/tokens"] == 20.0  # the same targets
    assert abs(two[1]["actor/loss"] - one[1]["actor/loss"]) < 1e-5
    assert abs(two[1]["actor/grad_norm"] - one[1]["actor/grad_norm"]) < 1e-5
    assert one[1]["actor/grad_norm"] > 1.0  # clipped: the norm is the pre-clip one on both sides
    for key in ("val/reward", "val/accuracy", "val/response_length"):  # 3 prompts: 2 on rank 0, 1 on rank 1
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-9)


def mixed_counting(counting_data: Path, out: Path) -> None:
    """8 counting rows where, in batches of 4 split 2 + 2 over 2 ranks, rank 0's rows are text-only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(counting_data / "train.parquet").to_pylist()[:8]
    for i, row in enumerate(rows):
        text_only = i % 4 < 2
        row["prompt"] = row["prompt"].replace("<image>", "") if text_only else row["prompt"]
        row["images"] = [] if text_only else [str(counting_data / p) for p in row["images"]]
    pq.write_table(pa.Table.from_pylist(rows), out)


def test_two_rank_ppo_on_a_mixed_dataset(tiny_model_factory, counting_data, tmp_path):
    """The critic's value model is sharded too and gets the same blank-image stand-in (Critic.build)."""
    mixed_counting(counting_data, tmp_path / "mixed.parquet")
    plugin = tmp_path / "length_reward.py"  # the count reward is 0 for a random model: no value or policy gradient
    plugin.write_text("def reward(response, answer, **meta):\n    return len(response) / 10\n")
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "ppo"), "data.val_files=",
            f"reward.functions={{'{plugin}:reward': 1.0}}",
            f"data.train_files={tmp_path / 'mixed.parquet'}", "data.batch_size=4", "data.shuffle=false",
            "algorithm.adv_estimator=gae", "rollout.n=1", "rollout.max_new_tokens=4", "trainer.total_steps=2",
            "trainer.val_before_train=false"]
    torchrun_train(over, tmp_path / "ppo.log")
    steps = [r for r in read_metrics(tmp_path / "ppo") if "critic/value_loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["critic/skipped"] == 0.0 and r["critic/grad_norm"] > 0 and r["actor/skipped"] == 0.0


def test_two_ranks_match_one_process_on_a_mixed_dataset(tiny_model_factory, counting_data, tmp_path):
    """Text-only rows beside image rows: rank 0's micro-batches are text-only and rank 1's have images, so rank 0
    runs the vision tower on the processor's blank image in their place (validation and training). The SFT step's
    loss and gradient norm, and the validation, equal one process's."""
    mixed_counting(counting_data, tmp_path / "mixed.parquet")
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "one"), "trainer.pipeline=sft",
            f"data.train_files={tmp_path / 'mixed.parquet'}", f"data.val_files={tmp_path / 'mixed.parquet'}",
            "data.max_val_samples=4", SFT_TARGET, "data.batch_size=4", "data.shuffle=false", "data.val_batch_size=2",
            "actor.micro_token_budget=75", "rollout.max_new_tokens=4", "trainer.total_steps=2"]
    run_experiment(load_config(None, over))
    torchrun_train([o.replace("experiment_name=one", "experiment_name=two") for o in over], tmp_path / "two.log")
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["response/tokens"] for r in two[1:]] == [r["response/tokens"] for r in one[1:]]
    for a, b in zip(one[1:], two[1:]):
        assert abs(b["actor/loss"] - a["actor/loss"]) < 1e-5
        assert abs(b["actor/grad_norm"] - a["actor/grad_norm"]) < 1e-5 and a["actor/grad_norm"] > 0
    for key in ("val/reward", "val/response_length"):
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-9)


def test_two_ranks_match_one_process_on_the_sft_term(tiny_model_factory, counting_data, tmp_path):
    """HPT with every group switched to its demonstration (threshold above any reward): the step is the SFT
    term alone on the 4 demonstrations, whose global denominator must make 2 ranks equal one process."""
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "one"), "data.val_files=",
            SFT_TARGET, "data.batch_size=4", "data.shuffle=false", "rollout.n=2", "rollout.max_new_tokens=4",
            "algorithm.demonstrations=switch", "algorithm.hpt_threshold=2.0", "algorithm.sft_coef=1.0",
            "actor.micro_token_budget=75", "trainer.total_steps=1", "trainer.val_before_train=false"]
    run_experiment(load_config(None, over))
    torchrun_train([o.replace("experiment_name=one", "experiment_name=two") for o in over], tmp_path / "two.log")
    one, two = read_metrics(tmp_path / "one")[-1], read_metrics(tmp_path / "two")[-1]
    assert one["demo/switched_fraction"] == two["demo/switched_fraction"] == 1.0
    assert abs(two["actor/demo_nll"] - one["actor/demo_nll"]) < 1e-5
    assert abs(two["actor/grad_norm"] - one["actor/grad_norm"]) < 1e-5 and one["actor/grad_norm"] > 0



def test_two_ranks_match_one_process_on_kl_cov_tokens(tiny_model_factory, counting_data, tmp_path):
    """KL-Cov chooses its tokens by covariance over the step's batch, every rank's: with greedy (identical)
    rollouts 2 ranks choose what one process does, and their second-epoch loss and gradient match it."""
    plugin = tmp_path / "varied.py"
    plugin.write_text("def reward(response, answer, **row):\n    return len(set(response)) / 10.0\n")
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "one"), "data.val_files=",
            "data.batch_size=4", "data.shuffle=false", "rollout.n=2", "rollout.temperature=0", "rollout.max_new_tokens=6",
            f"reward.functions={{'{plugin}:reward': 1.0}}", "algorithm.adv_estimator=reinforce_plus_plus",
            "algorithm.policy_loss=kl_cov", "algorithm.kl_cov_ratio=0.1", "actor.ppo_epochs=2", "actor.lr=3e-2",
            "actor.micro_token_budget=75", "trainer.total_steps=1", "trainer.val_before_train=false"]
    run_experiment(load_config(None, over))
    torchrun_train([o.replace("experiment_name=one", "experiment_name=two") for o in over], tmp_path / "two.log")
    one, two = read_metrics(tmp_path / "one")[-1], read_metrics(tmp_path / "two")[-1]
    assert one["actor/kl_cov_frac"] > 0 and two["actor/kl_cov_frac"] == pytest.approx(one["actor/kl_cov_frac"], abs=1e-9)
    # the second epoch runs on weights a 3e-2 step moved, summed in another order on 2 ranks: float noise grows
    assert two["actor/loss"] == pytest.approx(one["actor/loss"], rel=1e-3)
    assert two["actor/grad_norm"] == pytest.approx(one["actor/grad_norm"], rel=1e-3) and one["actor/grad_norm"] > 0

# An environment whose episodes last 1 + id % 3 turns whatever the policy writes, so the two ranks'
# episodes end at different turns and the multi-turn rollout must keep them in lock-step.
COUNTDOWN_ENV = '''
from rllava.envs import ENVIRONMENTS, Environment, Observation, StepResult

@ENVIRONMENTS.register("countdown")
class Countdown(Environment):
    @classmethod
    def from_config(cls, cfg, answer_reward=None):
        return cls()

    def reset(self, sample_meta, images):
        self.left = 1 + int(sample_meta["id"]) % 3
        return None

    def step(self, action_text):
        self.left -= 1
        if self.left == 0:
            return StepResult(None, 0.0, True, {"stop": "answer"})
        return StepResult(Observation(text="go on"), 0.0, False, {"action": "tool", "turn_reward": 0.1})
'''


@pytest.mark.parametrize("chunk", [0, 1])
def test_two_rank_agentic_episodes_of_different_lengths(tiny_model_factory, counting_data, tmp_path, chunk):
    """Agentic rollouts under fsdp2: rank 0's episodes take 1 turn and rank 1's 2; the ranks stay in step, also
    when rollout.batch_size splits a turn's generation into chunks (rank 1 then has more chunks than rank 0: the
    ranks hung in mismatched collectives)."""
    plugin = tmp_path / "countdown_env.py"
    plugin.write_text(COUNTDOWN_ENV)
    # Every token ends a turn (all ids are EOS), so no episode stops early for running out of tokens.
    model = tmp_path / "model"
    shutil.copytree(tiny_model_factory("qwen2_vl"), model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": list(range(4096))}))
    over = [*common(model, counting_data, tmp_path, "agent"), f"plugins=[{plugin}]",
            "trainer.pipeline=agentic", "env.name=countdown", "reward.functions={count: 1.0}", "data.batch_size=2",
            "data.shuffle=false", "data.val_files=", "rollout.n=2", "rollout.max_new_tokens=3",
            "trainer.total_steps=2", "trainer.save_freq=0", f"rollout.batch_size={chunk}"]
    torchrun_train(over, tmp_path / "agent.log", timeout=180)
    rows = [r for r in read_metrics(tmp_path / "agent") if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    # Unshuffled: step 1 is rows 0 (rank 0: 1 turn) and 1 (rank 1: 2 turns), step 2 rows 2 and 3 (3 and 1).
    assert rows[0]["agent/turns"] == 1.5 and rows[1]["agent/turns"] == 2.0
    assert all(r["actor/grad_norm"] == r["actor/grad_norm"] for r in rows)  # finite updates on both ranks


def test_two_rank_lora_run_exports_merged_model(tiny_model_factory, counting_data, tmp_path):
    """LoRA under fsdp2 (reference = adapters disabled): the exported folder equals peft's own merge."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    plugin = tmp_path / "signal_reward.py"
    plugin.write_text(SIGNAL_REWARD)
    base = tiny_model_factory("qwen2_vl")
    over = [*common(base, counting_data, tmp_path, "lora"), f"reward.functions={{'{plugin}:reward': 1.0}}",
            "model.lora_rank=4", "model.lora_alpha=8", "actor.lr=1e-2", "algorithm.kl_coef=0.05",
            "data.batch_size=2", "data.val_files=", "rollout.n=2", "rollout.max_new_tokens=4",
            "trainer.total_steps=2", "trainer.save_freq=0"]
    torchrun_train(over, tmp_path / "lora.log")
    rows = [r for r in read_metrics(tmp_path / "lora") if r["step"] > 0]
    assert len(rows) == 2 and all("actor/kl_loss" in r for r in rows)
    model_dir = tmp_path / "lora" / "checkpoints" / "step_2" / "model"
    exported = AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()  # loads without peft
    assert not any("lora_" in k or "base_layer" in k for k in exported)
    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), model_dir / "adapter")
    reference = peft_model.merge_and_unload().state_dict()
    initial = AutoModelForImageTextToText.from_pretrained(base).state_dict()
    assert exported.keys() == reference.keys()
    for k in exported:
        torch.testing.assert_close(exported[k], reference[k], atol=1e-6, rtol=1e-5)
    changed = {k for k in exported if not torch.equal(exported[k], initial[k])}
    assert changed and all("language_model" in k and "proj" in k for k in changed)  # only the adapted layers


def test_two_rank_8bit_adamw_steps_the_shards_and_resumes_exactly(tiny_model_factory, counting_data, tmp_path):
    """actor.optimizer=adamw_8bit under fsdp2: bitsandbytes steps each rank's local shards. Close to one process with
    the same optimizer (quantisation blocks can differ where a shard splits a tensor), and a resume is exact."""
    pytest.importorskip("bitsandbytes")
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "one"), "trainer.pipeline=sft",
            SFT_TARGET, "data.batch_size=4", "data.shuffle=false", "data.val_files=", "actor.optimizer=adamw_8bit",
            "trainer.total_steps=4", "trainer.save_freq=2", "trainer.val_before_train=false"]
    run_experiment(load_config(None, over))
    two = [o.replace("experiment_name=one", "experiment_name=two") for o in over]
    torchrun_train(two, tmp_path / "two.log")
    resumed = [o.replace("experiment_name=one", "experiment_name=resumed") for o in over]
    torchrun_train([*resumed, f"trainer.resume={tmp_path / 'two' / 'checkpoints' / 'step_2'}"], tmp_path / "resumed.log")
    engine_files = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step_2" / "engine").iterdir())
    assert {"optimizer_rank0.pt", "optimizer_rank1.pt"} <= set(engine_files)
    weights = {name: load_file(str(tmp_path / name / "checkpoints" / "step_4" / "model" / "model.safetensors"))
               for name in ("one", "two", "resumed")}
    initial = load_file(str(tiny_model_factory("qwen2_vl") / "model.safetensors"))
    assert all(torch.equal(weights["two"][k], weights["resumed"][k]) for k in initial)  # the 8-bit state was restored
    moved = sum(float((weights["one"][k] - initial[k]).abs().sum()) for k in initial)
    apart = sum(float((weights["two"][k] - weights["one"][k]).abs().sum()) for k in initial)
    assert moved > 0 and apart < 0.02 * moved, (apart, moved)
    one, two_rows = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert abs(two_rows[0]["actor/loss"] - one[0]["actor/loss"]) < 1e-5  # the same first step


def test_two_rank_uft_hints_in_search_episodes(tiny_model_factory, tmp_path):
    """fsdp2, Search-R1-style episodes with whole demonstrations as hints: rank 0's demonstration opens with a
    whole search turn (no policy call needed), rank 1's is a lone answer the policy must finish; every turn
    both ranks still make one generate call, so neither waits for ever."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "corpus.jsonl").write_text(json.dumps({"id": "p0", "title": "Sky", "text": "The sky is blue."}) + "\n")
    demos = [["<search>sky</search>", "<answer>blue</answer>"], ["<answer>blue</answer>"]] * 2
    rows = [{"prompt": "What colour is the sky?", "answer": "blue", "demo_turns": json.dumps(d)} for d in demos]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    over = [f"model.path={tiny_model_factory('qwen2')}", f"data.train_files={tmp_path / 'train.parquet'}", "data.val_files=",
            "data.batch_size=2", "data.shuffle=false", "rollout.n=2", "rollout.max_new_tokens=4", "actor.lr=1e-3",
            "trainer.pipeline=agentic", "env.name=tools", "env.tools=[search]", "env.call_format=tags",
            "env.observation_role=raw", f"env.corpus_path={tmp_path / 'corpus.jsonl'}", "env.max_turns=2",
            "rollout.stop=['</search>']", "reward.functions={exact_match: 1.0}", "algorithm.demonstrations=hint",
            "algorithm.sft_coef=1.0", "algorithm.hint_steps=4", "algorithm.hint_ratio_high=1.0",
            "algorithm.hint_ratio_low=1.0", f"trainer.output_dir={tmp_path}", "trainer.experiment_name=hint",
            "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "trainer.device=cpu", "trainer.total_steps=2",
            "trainer.save_freq=0"]
    torchrun_train(over, tmp_path / "hint.log", timeout=180)
    rows = [r for r in read_metrics(tmp_path / "hint") if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["demo/hint_tokens_mean"] > 0 and r["actor/demo_nll"] > 0 and r["agent/tool_calls"] == 0.5


# Varies with the response on the first two prompts (rank 0's share of a 4-prompt batch) and is 0 on the others,
# so rank 1's groups are uniform: with actor.skip_zero_advantage it has nothing to run while rank 0 has some.
FIRST_PROMPTS_REWARD = '''
import zlib

def reward(response, answer, **row):
    return float(int(row["id"]) < 2 and zlib.crc32(response.encode()) % 2 == 0)
'''


def test_two_ranks_skip_zero_advantage_rows_exactly_when_one_rank_skips_every_row(tiny_model_factory, counting_data,
                                                                                  tmp_path):
    """Two fsdp2 runs with the same seed (so the same rollouts), with and without actor.skip_zero_advantage: rank 1
    runs only a zero-weight row (in the old-log-prob pass and in each update), rank 0 its live groups, and the
    loss and gradient norm are those of running all."""
    plugin = tmp_path / "first_prompts.py"
    plugin.write_text(FIRST_PROMPTS_REWARD)
    over = [*common(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "plain"), "data.val_files=",
            f"reward.functions={{'{plugin}:reward': 1.0}}", "data.batch_size=4", "data.shuffle=false", "rollout.n=4",
            "rollout.max_new_tokens=8", "actor.micro_token_budget=150", "trainer.total_steps=1",
            "actor.mini_batch_size=8",  # two mini-batches a rank: old log-probs, which rank 1 needs for no row
            "trainer.val_before_train=false"]
    torchrun_train(over, tmp_path / "plain.log")
    torchrun_train([o.replace("experiment_name=plain", "experiment_name=skip") for o in over]
                   + ["actor.skip_zero_advantage=true"], tmp_path / "skip.log")
    plain, skip = read_metrics(tmp_path / "plain")[-1], read_metrics(tmp_path / "skip")[-1]
    assert plain["reward/mean"] == skip["reward/mean"] > 0  # the same rollouts
    assert 0.5 <= skip["actor/skipped_rows"] < 1.0  # rank 1's 8 rows, and perhaps one of rank 0's groups
    assert abs(skip["actor/loss"] - plain["actor/loss"]) < 1e-6
    assert skip["actor/grad_norm"] == pytest.approx(plain["actor/grad_norm"], rel=1e-4) and plain["actor/grad_norm"] > 0
