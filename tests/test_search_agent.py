"""Search-R1-style agentic RL on a text LLM: `<search>` calls (env.call_format=tags), retrieved passages that
continue the assistant's own text (env.observation_role=raw) and `</search>` as a stop string."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rllava.config import load_config

FACTS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("blood", "red")]


@pytest.fixture(scope="module")
def search_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    passages = [{"id": f"p{i}", "title": thing.title(), "text": f"The colour of {thing} is {colour}."}
                for i, (thing, colour) in enumerate(FACTS)]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(p) for p in passages) + "\n")
    rows = [{"prompt": f"What colour is {thing}?", "answer": colour,
             "demo_turns": json.dumps([f"<search>{thing} colour</search>", f"<answer>{colour}</answer>"])}
            for thing, colour in FACTS]
    pq.write_table(pa.Table.from_pylist(rows), root / "train.parquet")
    return root


def overrides(model: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={root / 'train.parquet'}", "data.val_files=",
            "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8", "actor.lr=2e-3",
            "env.name=tools", "env.tools=[search]", "env.call_format=tags", "env.observation_role=raw",
            'env.observation_template="\\n<information>{text}</information>\\n"', f"env.corpus_path={root / 'corpus.jsonl'}",
            "env.max_turns=2", "rollout.stop=['</search>']", "reward.functions={exact_match: 1.0}",
            "trainer.total_steps=3", f"trainer.output_dir={out}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]", "trainer.val_before_train=false", *extra]


def test_a_demonstration_reads_as_one_assistant_text(tiny_model_factory, search_data, tmp_path):
    """Played through the environment, a demonstration is: the search (trained), the retrieved passages in
    <information> (context), the answer and one EOS (trained), with no chat markers in between."""
    from rllava.data.dataset import RLDataset
    from rllava.engines.hf_rollout import Sampling
    from rllava.models.load import eos_token_ids, load_model_and_processor
    from rllava.pipelines.agentic import DemoEngine, multiturn_rollout
    from rllava.roles.rollout import Rollout

    cfg = load_config(None, overrides(tiny_model_factory("qwen2"), search_data, tmp_path))
    model, tok = load_model_and_processor(cfg.model)
    eos = eos_token_ids(model, tok)[0]
    rollout = multiturn_rollout(cfg, tok, Rollout(DemoEngine(tok, eos, every_turn=False), tok, cfg.rollout))
    (ep,) = rollout.generate([RLDataset(str(search_data / "train.parquet"), cfg.data, tok)[0]], Sampling(temperature=0.0))
    search = tok("<search>sky colour</search>", add_special_tokens=False)["input_ids"]
    answer = tok("<answer>blue</answer>", add_special_tokens=False)["input_ids"] + [eos]
    n_obs = len(ep.response_ids) - len(search) - len(answer)
    assert ep.response_ids[:len(search)] == search and ep.response_ids[-len(answer):] == answer
    assert ep.response_mask == [1] * len(search) + [0] * n_obs + [1] * len(answer)
    info = tok.decode(ep.response_ids[len(search):len(search) + n_obs])
    assert info.startswith("\n<information>[1] (id p0) Sky\nThe colour of sky is blue.") and info.endswith("</information>\n")
    assert ep.info["tool_calls"] == 1 and ep.finished and ep.info["stop"] == "answer"


def test_sft_on_search_demonstrations_then_rl_with_the_stop_string(tiny_model_factory, search_data, tmp_path):
    from rllava.pipelines.run import run_experiment

    model = tiny_model_factory("qwen2")
    sft = run_experiment(load_config(None, overrides(model, search_data, tmp_path, "trainer.pipeline=agentic_sft",
                                                     "trainer.experiment_name=sft", "data.batch_size=4")))
    rows = [json.loads(ln) for ln in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/nll" in r]
    assert [r["demo/tool_call_rate"] for r in train] == [1.0] * 3 and train[-1]["actor/nll"] < train[0]["actor/nll"]
    rl = run_experiment(load_config(None, overrides(sft["final_model"], search_data, tmp_path, "trainer.pipeline=agentic",
                                                    "trainer.experiment_name=rl", "trainer.total_steps=2")))
    rows = [json.loads(ln) for ln in (Path(rl["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["step"] > 0] == [1, 2] and all("agent/tool_calls" in r for r in rows[-2:])
