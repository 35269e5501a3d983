"""Code-integrated agentic RL on a text LLM (the `calculate` task): `<python>` calls run in the sandbox, their
output continues the assistant's text inside `<output>`, and `</python>` is a stop string."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import load_config


@pytest.fixture(scope="module")
def calculate_data(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("calculate", tmp_path_factory.mktemp("calculate") / "data", n=10, seed=0, terms=2, max_value=999)


def overrides(model: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={root / 'train.parquet'}", "data.val_files=",
            "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=40", "actor.lr=2e-3",
            "env.name=tools", "env.tools=[python]", "env.call_format=tags", "env.observation_role=raw",
            'env.observation_template="\\n<output>\\n{text}\\n</output>\\n"', "env.max_turns=2",
            "rollout.stop=['</python>']", "reward.functions={count: 1.0}",
            "trainer.total_steps=3", f"trainer.output_dir={out}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]", "trainer.val_before_train=false", *extra]


def test_a_demonstration_runs_its_code_in_the_sandbox(tiny_model_factory, calculate_data, tmp_path):
    """Played through the environment, a demonstration is: the code (trained), the sandbox's output in <output>
    (context, masked out of the loss), the answer and one EOS (trained); the episode scores 1."""
    from rllava.data.dataset import RLDataset
    from rllava.engines.hf_rollout import Sampling
    from rllava.models.load import eos_token_ids, load_model_and_processor
    from rllava.pipelines.agentic import DemoEngine, EpisodeRewardScorer, multiturn_rollout
    from rllava.roles.reward import RewardScorer
    from rllava.roles.rollout import Rollout

    cfg = load_config(None, overrides(tiny_model_factory("qwen2"), calculate_data, tmp_path))
    model, tok = load_model_and_processor(cfg.model)
    eos = eos_token_ids(model, tok)[0]
    rollout = multiturn_rollout(cfg, tok, Rollout(DemoEngine(tok, eos, every_turn=False), tok, cfg.rollout))
    row = RLDataset(str(calculate_data / "train.parquet"), cfg.data, tok)[0]
    (ep,) = rollout.generate([row], Sampling(temperature=0.0))
    expression, answer = row.meta["expression"], row.meta["answer"]
    code = tok(f"<python>print({expression})</python>", add_special_tokens=False)["input_ids"]
    final = tok(f"<answer>{answer}</answer>", add_special_tokens=False)["input_ids"] + [eos]
    n_obs = len(ep.response_ids) - len(code) - len(final)
    assert ep.response_ids[:len(code)] == code and ep.response_ids[-len(final):] == final
    assert ep.response_mask == [1] * len(code) + [0] * n_obs + [1] * len(final)
    assert tok.decode(ep.response_ids[len(code):len(code) + n_obs]) == f"\n<output>\nexit status: 0\nstdout:\n{answer}\n</output>\n"
    assert ep.info["tool_calls"] == 1 and ep.finished and ep.info["stop"] == "answer"
    assert ep.info["transcript"] == [f"<python>print({expression})</python>",
                                     f"\n<output>\nexit status: 0\nstdout:\n{answer}\n</output>\n", f"<answer>{answer}</answer>"]
    scores = EpisodeRewardScorer(RewardScorer(cfg.reward), cfg.env.reward_weights).score([ep])
    assert scores["reward/accuracy"] == 1.0


def test_sft_on_code_demonstrations_then_rl_runs_the_policys_code(tiny_model_factory, calculate_data, tmp_path):
    """After a warm start on the demonstrations, the policy's own RL rollouts call the python tool, and the sandbox's
    answer makes a second turn."""
    from rllava.pipelines.run import run_experiment

    model = tiny_model_factory("qwen2")
    sft = run_experiment(load_config(None, overrides(model, calculate_data, tmp_path, "trainer.pipeline=agentic_sft",
                                                     "trainer.experiment_name=sft", "data.batch_size=4",
                                                     "trainer.total_steps=60")))
    rows = [json.loads(ln) for ln in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/nll" in r]
    assert all(r["demo/tool_call_rate"] == 1.0 for r in train) and train[-1]["actor/nll"] < train[0]["actor/nll"] / 2
    rl = run_experiment(load_config(None, overrides(sft["final_model"], calculate_data, tmp_path, "trainer.pipeline=agentic",
                                                    "trainer.experiment_name=rl", "trainer.total_steps=2", "actor.lr=1e-4",
                                                    f"data.val_files={calculate_data / 'test.parquet'}")))
    rows = [json.loads(ln) for ln in (Path(rl["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "agent/turns" in r]
    assert [r["step"] for r in train] == [1, 2] and all(r["agent/tool_call_rate"] > 0 for r in train), train
    # The validation samples show whole episodes: the policy's call, the sandbox's output and the answer.
    (sample,) = [json.loads(ln) for ln in (Path(rl["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    assert len(sample["transcript"]) == 3 and sample["transcript"][0].startswith("<python>"), sample
    assert sample["transcript"][1].startswith("\n<output>\nexit status: ") and sample["transcript"][2] == sample["response"]
