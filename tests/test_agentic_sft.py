"""Tool-use demonstrations: the played episode's layout, the loss mask, an `agentic_sft` run, and the
SFT-RL hybrids (LUFFY's `mix`, HPT's `switch`) with multi-turn demonstrations in `agentic` RL."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from rllava.config import load_config
from rllava.data.rows import DataError
from rllava.data.types import Batch

EASY = dict(length=1, alphabet="AX", min_size=192, max_size=192, grid=2, clutter=0)


@pytest.fixture(scope="module")
def zoom_data(tmp_path_factory):
    from rllava.tasks import make_task

    return make_task("zoom", tmp_path_factory.mktemp("d") / "zoom", n=10, seed=0, **EASY)


@pytest.fixture(scope="module")
def demo_setup(tiny_model_factory, zoom_data):
    """A multi-turn rollout whose engine plays the rows' demonstrations against the real zoom tool."""
    from rllava.data.dataset import RLDataset
    from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.pipelines.agentic import DemoEngine, multiturn_rollout
    from rllava.roles.rollout import Rollout

    cfg = load_config(None, [f"model.path={tiny_model_factory('qwen2_vl')}", "env.name=tools", "env.tools=[zoom]",
                             "env.max_turns=3", "data.max_pixels=12544"])
    model, processor = load_model_and_processor(cfg.model)
    tok = get_tokenizer(processor)
    eos = eos_token_ids(model, processor)[0]
    rollout = multiturn_rollout(cfg, processor, Rollout(DemoEngine(tok, eos), tok, cfg.rollout))
    ds = RLDataset(str(zoom_data / "train.parquet"), cfg.data, processor)
    return cfg, model, processor, tok, eos, rollout, [ds[0], ds[1], ds[2]], pad_token_id(processor)


def _zoomed(path: str, bbox: list[int], longer: int = 224) -> Image.Image:
    """What the zoom tool should return for an in-image integer box: the crop, longer side scaled to 224."""
    crop = Image.open(path).convert("RGB").crop(bbox)
    scale = longer / max(crop.size)
    return crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC)


def test_demo_episode_layout_runs_the_real_zoom_tool(demo_setup):
    from rllava.engines.hf_rollout import Sampling
    from rllava.envs import parse_action

    cfg, model, processor, tok, eos, rollout, prompts, pad = demo_setup
    episodes = rollout.generate(prompts, Sampling(n=1, temperature=0.0))
    for ep in episodes:
        call, answer = ep.prompt.meta["demo_turns"]
        assert ep.info["turns"] == 2 and ep.info["tool_calls"] == 1 and ep.info["stop"] == "answer"
        assert ep.finished and ep.info["format_ok"]
        call_ids = tok(call, add_special_tokens=False)["input_ids"] + [eos]
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [eos]
        n_obs = len(ep.response_ids) - len(call_ids) - len(answer_ids)
        # demonstration turn (trained) | observation with the zoomed image (context) | answer turn (trained)
        assert ep.response_ids[:len(call_ids)] == call_ids and ep.response_ids[-len(answer_ids):] == answer_ids
        assert ep.response_mask == [1] * len(call_ids) + [0] * n_obs + [1] * len(answer_ids)
        assert len(ep.rollout_logp) == len(ep.response_ids)
        # the observation's image is the tool's real crop of the full-resolution image, processed once
        bbox = parse_action(call).arguments["bbox"]
        zoomed = _zoomed(ep.prompt.meta["images"][0], bbox)
        assert min(zoomed.convert("L").getextrema()) < 80  # the label's dark letter is in the crop
        expected = processor.image_processor(images=[zoomed], return_tensors="pt")
        (mm,) = ep.extra_mm
        assert torch.equal(mm["image_grid_thw"], expected["image_grid_thw"])
        assert torch.allclose(mm["pixel_values"], expected["pixel_values"])
        n_image_tokens = int(expected["image_grid_thw"].prod()) // 4  # 2x2 patch merge
        image_positions = [i for i, t in enumerate(ep.response_ids) if t == processor.image_token_id]
        assert len(image_positions) == n_image_tokens
        assert all(ep.response_mask[i] == 0 for i in image_positions)
        assert [i for i, t in enumerate(ep.response_seq["mm_token_type_ids"]) if t == 1] == image_positions


def _demo_crop(rollout, prompt, original: str, bbox: list[int]) -> tuple:
    """(the image inputs of the observation after the row's demonstrated zoom call, the processor's inputs for the
    zoom of `bbox` on the `original` image file)."""
    from rllava.engines.hf_rollout import Sampling

    (ep,) = rollout.generate([prompt], Sampling(n=1, temperature=0.0))
    assert ep.info["tool_calls"] == 1 and len(ep.extra_mm) == 1
    processor = rollout.renderer.processor
    return ep.extra_mm[0], processor.image_processor(images=[_zoomed(original, bbox)], return_tensors="pt")


def test_zoom_crops_the_original_image_under_another_image_key(demo_setup, zoom_data, tmp_path):
    """data.image_key=image: the zoom tool still gets the row's full-resolution original (192 px), not the prompt's
    resized image (112 px), so the demonstration's box (original pixels) crops the label."""
    import shutil

    import pyarrow.parquet as pq

    from rllava.data.dataset import RLDataset
    from rllava.envs import parse_action
    from rllava.pipelines.agentic import DemoEngine, multiturn_rollout
    from rllava.roles.rollout import Rollout

    _, _, processor, tok, eos, _, _, _ = demo_setup
    data = shutil.copytree(zoom_data, tmp_path / "zoom")
    table = pq.read_table(data / "train.parquet")
    pq.write_table(table.rename_columns(["image" if c == "images" else c for c in table.column_names]),
                   data / "renamed.parquet")
    cfg = load_config(None, ["env.name=tools", "env.tools=[zoom]", "data.max_pixels=12544", "data.image_key=image"])
    rollout = multiturn_rollout(cfg, processor, Rollout(DemoEngine(tok, eos), tok, cfg.rollout))
    p = RLDataset(str(data / "renamed.parquet"), cfg.data, processor)[0]
    assert p.images[0].size == (112, 112) and p.meta["image_sizes"] == [[192, 192]]
    bbox = parse_action(p.meta["demo_turns"][0]).arguments["bbox"]
    got, expected = _demo_crop(rollout, p, p.meta["image"][0], bbox)
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
    assert torch.allclose(got["pixel_values"], expected["pixel_values"])


def test_zoom_box_in_the_shown_images_pixels_crops_the_original(demo_setup):
    """env.zoom_box_frame=input, through the dataset and the multi-turn rollout: a box in the pixels of the image
    the model was shown (112 px, the processor's grid) crops that region of the 192 px original. Boxes on a 7 px
    grid of the shown image are whole pixels of the original (x 12/7), so the crop is known exactly."""
    import math

    from rllava.pipelines.agentic import DemoEngine, multiturn_rollout
    from rllava.roles.rollout import Rollout
    from rllava.tasks.zoom import zoom_call

    cfg, _, processor, tok, eos, _, prompts, _ = demo_setup
    cfg = load_config(None, ["env.name=tools", "env.tools=[zoom]", "data.max_pixels=12544", "env.zoom_box_frame=input"])
    rollout = multiturn_rollout(cfg, processor, Rollout(DemoEngine(tok, eos), tok, cfg.rollout))
    p = prompts[0]
    assert p.meta["image_sizes"] == [[192, 192]] and p.meta["input_image_sizes"] == [[112, 112]]
    label = json.loads(p.meta["label_box"])
    shown = [7 * math.floor(v * 112 / 192 / 7) for v in label[:2]] + [7 * math.ceil(v * 112 / 192 / 7) for v in label[2:]]
    original = [v * 12 // 7 for v in shown]
    assert original[:2] <= label[:2] and original[2:] >= label[2:]  # the label is inside
    row = dataclasses.replace(p, meta={**p.meta, "demo_turns": [zoom_call(shown)]})
    got, expected = _demo_crop(rollout, row, p.meta["images"][0], original)
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
    assert torch.allclose(got["pixel_values"], expected["pixel_values"])


def test_sft_loss_covers_only_demonstration_tokens(demo_setup):
    from rllava.algorithms import POLICY_LOSSES
    from rllava.engines.hf_rollout import Sampling
    from rllava.models.logprobs import response_logprobs

    cfg, model, processor, tok, eos, rollout, prompts, pad = demo_setup
    batch = Batch.from_episodes(rollout.generate(prompts, Sampling(n=1, temperature=0.0)), pad)
    mask = batch.response_mask
    assert 0 < mask.sum() < batch.attention_mask[:, batch.prompt_width:].sum()  # observation tokens are there, untrained
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    logp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("sft")(logp, logp.detach(), torch.zeros_like(logp), mask, cfg.algorithm,
                                             norm_len=batch.response_width)
    loss.backward()
    assert torch.equal(logp.grad != 0, mask.bool())  # a gradient on exactly the demonstration's tokens
    assert loss.item() == pytest.approx(float(-(logp.detach() * mask).sum() / mask.sum()), rel=1e-5)


def test_demo_engine_ends_the_episode_when_the_demonstration_runs_out(demo_setup):
    from rllava.engines.hf_rollout import Sampling
    from rllava.pipelines.agentic import DemoEngine, demo_turns

    cfg, model, processor, tok, eos, rollout, prompts, pad = demo_setup
    p = prompts[0]
    only_call = dataclasses.replace(p, meta={**p.meta, "demo_turns": json.dumps(p.meta["demo_turns"][:1])})
    (ep,) = rollout.generate([only_call], Sampling(n=1, temperature=0.0))
    assert ep.info["tool_calls"] == 1 and not ep.finished and ep.response_mask[-1] == 0  # ends after the observation
    # A row without its demonstration: the error names the row's file, its row number and the field.
    with pytest.raises(DataError, match=rf"^{re.escape(p.where)}, field 'demo_turns' \(data.demo_key\): must hold a list"):
        DemoEngine(tok, eos).generate([dataclasses.replace(p, meta={"index": 3})], Sampling(n=1))
    assert re.fullmatch(r".*\.parquet, row \d+", p.where)
    assert demo_turns({"d": '["a", "b"]'}, "d") == ["a", "b"]
    with pytest.raises(DataError, match=r"dataset row 4, field 'd' \(data.demo_key\): must hold a list .* got '\[\"a\", b'"):
        demo_turns({"d": '["a", b', "index": 4}, "d")
    for empty in ([], ["", " "], "[]"):  # nothing to imitate: it trained on no token and crashed in backward
        with pytest.raises(DataError, match=r"dataset row 4, field 'd' \(data.demo_key\): the demonstration is empty"):
            demo_turns({"d": empty, "index": 4}, "d")


def test_agentic_sft_trains_on_demonstrations_and_validates_the_policy(tiny_model_factory, zoom_data, tmp_path):
    from rllava.pipelines.run import run_experiment

    cfg = load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={zoom_data / 'train.parquet'}",
        f"data.val_files={zoom_data / 'val.parquet'}", "data.batch_size=8", "data.max_pixels=12544",
        "rollout.max_new_tokens=8", "actor.lr=2e-3", "trainer.pipeline=agentic_sft", "env.name=tools",
        "env.tools=[zoom]", "env.max_turns=2", "reward.functions={exact_match: 1.0}", "trainer.total_steps=3",
        f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]"])
    result = run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(tmp_path) / "default" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    train = rows[1:]
    for r in train:  # every demonstration zooms once, then answers correctly
        assert (r["demo/accuracy"], r["demo/tool_call_rate"], r["demo/turns"], r["demo/complete"]) == (1.0, 1.0, 2.0, 1.0)
    nll = [r["actor/nll"] for r in train]
    assert nll[0] > nll[1] > nll[2]  # the same 8 demonstrations each step: the NLL falls
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]  # the policy's own greedy episodes
    for r in (rows[0], rows[-1]):  # validation keeps the multi-turn metrics
        assert 1.0 <= r["val/agent/turns"] <= 2.0 and 0.0 <= r["val/agent/tool_call_rate"] <= 1.0
    assert Path(result["final_model"]).is_dir()


def agentic_run(tiny_model_factory, zoom_data, tmp_path, keep, *extra: str) -> tuple[list[dict], list[Batch]]:
    """A 3-step agentic GRPO run with the zoom tool on the easy rows; its metrics rows and the batches
    built from episodes that `keep` accepts."""
    from rllava.pipelines.run import run_experiment

    seen: list[Batch] = []
    original = Batch.from_episodes

    def spy(episodes, pad_id):
        batch = original(episodes, pad_id)
        if keep(episodes):
            seen.append(batch)
        return batch

    cfg = load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={zoom_data / 'train.parquet'}",
        "data.val_files=", "data.batch_size=2", "data.max_pixels=12544", "rollout.n=2", "rollout.max_new_tokens=8",
        "actor.lr=2e-3", "trainer.pipeline=agentic", "env.name=tools", "env.tools=[zoom]", "env.max_turns=2",
        "reward.functions={exact_match: 1.0}", "algorithm.sft_coef=1.0", "trainer.total_steps=3",
        f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
        "trainer.val_before_train=false", *extra])
    Batch.from_episodes = spy
    try:
        run_experiment(cfg)
    finally:
        Batch.from_episodes = original
    rows = [json.loads(ln) for ln in (Path(tmp_path) / "default" / "metrics.jsonl").read_text().splitlines()]
    return rows, seen


@pytest.mark.parametrize("mode", ["mix", "switch", "sft"])
def test_agentic_rl_with_multi_turn_demonstrations(tiny_model_factory, zoom_data, tmp_path, mode):
    """Each group's demonstration zooms, sees the real crop and answers; it joins its group (LUFFY), replaces
    a failing one (HPT) or is trained by the SFT term beside it (CHORD). Only its own turns are trained:
    observation tokens stay masked."""
    extra = ["algorithm.policy_loss=luffy"] if mode == "mix" else ["algorithm.hpt_threshold=0.5"]
    rows, seen = agentic_run(tiny_model_factory, zoom_data, tmp_path, lambda eps: any(e.is_expert for e in eps),
                             f"algorithm.demonstrations={mode}", *extra)
    assert len(rows) == 3 and len(seen) == 3
    for batch in seen:
        for i in batch.is_expert.nonzero().flatten().tolist():
            demo = batch.episodes[i]
            assert demo.info["turns"] == 2 and demo.info["tool_calls"] == 1 and demo.extra_mm  # the real crop
            assert demo.reward_info["answer_reward"] == 1.0
            mask = batch.response_mask[i][: len(demo.response_ids)]
            assert 0 < mask.sum() < len(demo.response_ids)  # its observation tokens are not trained
        if mode in ("mix", "sft"):  # 2 rollouts + the demonstration per group
            assert batch.is_expert.tolist() == [False, False, True] * 2
        if mode == "sft":  # trained by the SFT term alone
            assert not batch.advantages[batch.is_expert].any()
    assert all(r["actor/demo_nll"] > 0 for r in rows)
    if mode == "switch":  # the random policy never answers right: every group is switched
        assert all(r["demo/switched_fraction"] == 1.0 for r in rows)
    elif mode == "mix":
        assert all(r["reward/demo_mean"] > 1.0 - 1e-6 for r in rows)


def test_hint_turns_cut_a_demonstration_at_its_turns():
    from rllava.pipelines.agentic import hint_turns

    turns = [[1, 2, 9], [3, 4, 9]]  # two turns, each ended by EOS 9
    assert hint_turns(turns, 0) == []
    assert hint_turns(turns, 2) == [([1, 2], False)]
    assert hint_turns(turns, 3) == [([1, 2, 9], True)]
    assert hint_turns(turns, 5) == [([1, 2, 9], True), ([3, 4], False)]  # the most a hint holds (L = 6 - 1)


def test_hinted_episode_replays_the_demonstration_then_the_policy_continues(demo_setup):
    """A UFT hint of the whole zoom turn and 2 tokens of the answer: the episode is the demonstration's
    episode up to there (the real tool ran, its crop is in the observation), then the policy's own tokens,
    whose recorded log-probs one forward over the episode reproduces; the environment read the whole turn."""
    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
    from rllava.models.logprobs import response_logprobs
    from rllava.pipelines.agentic import demo_turn_ids, hint_turns, multiturn_rollout
    from rllava.roles.multiturn import HINT_KEY
    from rllava.roles.rollout import Rollout

    cfg, model, processor, tok, eos, demo_rollout, prompts, pad = demo_setup
    engine = HFRolloutEngine(model, pad_id=pad, eos_ids=[eos], suppress_ids=[processor.image_token_id])
    policy = multiturn_rollout(cfg, processor, Rollout(engine, tok, cfg.rollout))
    demos = demo_rollout.generate(prompts, Sampling(n=1, temperature=0.0))
    hinted = []
    for p in prompts:
        call, answer = demo_turn_ids(tok, p, "demo_turns", eos)
        hinted.append(dataclasses.replace(p, meta={**p.meta, HINT_KEY: hint_turns([call, answer], len(call) + 2)}))
    torch.manual_seed(0)
    episodes = policy.generate(hinted, Sampling(n=2, temperature=1.0, max_new_tokens=5, logprobs=True))
    assert len(episodes) == 6
    for ep in episodes:
        demo = demos[ep.group_id]
        call, answer = demo_turn_ids(tok, ep.prompt, "demo_turns", eos)
        n_obs = len(demo.response_ids) - len(call) - len(answer)
        assert ep.hint_len == len(call) + n_obs + 2
        assert ep.response_ids[:ep.hint_len] == demo.response_ids[:ep.hint_len]
        assert ep.response_mask[:ep.hint_len] == demo.response_mask[:ep.hint_len]
        assert ep.info["tool_calls"] == 1 and len(ep.extra_mm) == 1
        assert torch.equal(ep.extra_mm[0]["pixel_values"], demo.extra_mm[0]["pixel_values"])
        assert len(ep.response_ids) > ep.hint_len  # the policy wrote the rest of the answer turn
        assert ep.info["transcript"][-1].startswith(tok.decode(answer[:2], skip_special_tokens=True))
    batch = Batch.from_episodes(episodes, pad)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    recorded = torch.tensor([ep.rollout_logp + [0.0] * (batch.response_width - len(ep.rollout_logp)) for ep in episodes])
    own = batch.response_mask.bool() & (torch.arange(batch.response_width)[None, :] >= batch.hint_len[:, None])
    assert own.any() and torch.allclose(logp[own], recorded[own], atol=1e-4)


def test_agentic_uft_trains_hints_by_sft_and_the_rest_by_rl(tiny_model_factory, zoom_data, tmp_path):
    """demonstrations=hint in the agentic pipeline: the whole hint for 2 steps (the demonstration up to its
    last EOS, the policy ends it), then none. Hinted tokens get no advantage; the SFT term trains them."""
    from transformers import AutoTokenizer

    from rllava.pipelines.agentic import demo_turns

    rows, seen = agentic_run(tiny_model_factory, zoom_data, tmp_path, lambda eps: any(e.response_ids for e in eps),
                             "algorithm.demonstrations=hint", "algorithm.hint_steps=2", "algorithm.hint_ratio_high=1.0",
                             "algorithm.hint_ratio_low=1.0", "rollout.max_new_tokens=4")
    assert [r["demo/hint_ratio"] for r in rows] == [1.0, 1.0, 0.0] and len(seen) == 3
    tok = AutoTokenizer.from_pretrained(tiny_model_factory("qwen2_vl"))
    for batch in seen[:2]:
        for i, ep in enumerate(batch.episodes):  # zoom call + EOS | observation | the answer, then the policy's tokens
            call, answer = (tok(t, add_special_tokens=False)["input_ids"] for t in demo_turns(ep.prompt.meta, "demo_turns"))
            h = int(batch.hint_len[i])
            assert ep.info["tool_calls"] == 1 and ep.response_ids[:len(call)] == call
            assert ep.response_ids[h - len(answer):h] == answer and len(ep.response_ids) > h
            assert ep.response_mask[len(call) + 1:h - len(answer)] == [0] * (h - len(answer) - len(call) - 1)
            assert not any(k in ep.prompt.meta for k in ("hint_turns", "_prompt_without_hint"))  # the row's own prompt
        hint_tokens = torch.arange(batch.response_width)[None, :] < batch.hint_len[:, None]
        assert not batch.advantages[hint_tokens].any()
    assert seen[2].hint_len is None
    assert all(r["actor/demo_nll"] > 0 for r in rows[:2]) and "actor/demo_nll" not in rows[2]
