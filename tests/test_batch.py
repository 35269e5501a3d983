import torch

from rllava.data.types import Batch, Episode, Prompt, concat_mm


def make_batch():
    p = Prompt([5, 6, 7], mm={"pixel_values": torch.ones(4, 3)}, seq={"mm_token_type_ids": [0, 1, 0]})
    q = Prompt([9], mm={"pixel_values": torch.full((2, 3), 2.0)}, seq={"mm_token_type_ids": [0]})
    eps = [Episode(p, [1, 2, 3], [1, 1, 1], reward=1.0, group_id=0),
           Episode(p, [1], [1], reward=0.0, group_id=0),
           Episode(q, [4, 8], [1, 0], reward=0.5, group_id=1)]  # last token came from the environment
    return Batch.from_episodes(eps, pad_id=0)


def test_layout_left_prompt_right_response():
    b = make_batch()
    assert b.prompt_width == 3 and b.response_width == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 1, 2, 3], [5, 6, 7, 1, 0, 0], [0, 0, 9, 4, 8, 0]]
    assert b.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]
    assert b.response_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    # score sits on the last *trained* token (env tokens are not trained)
    assert b.token_rewards.tolist() == [[0, 0, 1.0], [0.0, 0, 0], [0.5, 0, 0]]
    assert b.seq_extras["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert b.group_ids.tolist() == [0, 0, 1]


def test_model_inputs_concatenates_images_per_sequence():
    inputs = make_batch().model_inputs()
    assert inputs["pixel_values"].shape == (4 + 4 + 2, 3)
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values"}


def test_select_trims_padding_columns():
    b = make_batch()
    s = b.select([2])
    assert s.input_ids.tolist() == [[9, 4, 8]] and s.prompt_width == 1 and s.response_width == 2
    assert s.token_rewards.tolist() == [[0.5, 0.0]]
    assert s.seq_extras["mm_token_type_ids"].shape == (1, 3)
    assert s.model_inputs()["pixel_values"].shape == (2, 3)


def test_split_by_token_budget():
    b = make_batch()
    # (prompt, response) lengths: row0 (3, 3), row1 (3, 1), row2 (1, 2). The plain forward packs each row's
    # tokens together, so a micro-batch costs rows x its longest row: rows 2 and 1 take 4 x 2 = 8 tokens
    # (in the [prompt | response] layout they would take (3 + 2) x 2 = 10).
    assert b.token_budget_groups(8) == [[2, 1], [0]]
    assert b.token_budget_groups(7) == [[2], [1], [0]]
    micro = b.split_by_tokens(8)
    assert sum(len(m) for m in micro) == 3
    assert all(len(m) * int(m.attention_mask.sum(1).max()) <= 8 for m in micro)
    assert len(b.split_by_tokens(1)) == 3  # a row over the budget still gets its own micro-batch


def test_split_by_token_budget_counts_a_shared_prompt_once():
    b = make_batch()
    # Rows 0 and 1 share prompt p (3 tokens). Shared, they cost 3 + 2 rows x 3 response tokens = 9.
    assert b.token_budget_groups(9, share_prompts=True) == [[2], [1, 0]]
    assert b.token_budget_groups(9) == [[2, 1], [0]]  # unshared: rows 0 and 1 take 2 x 6 = 12
    # Rows 2 and 1 have different prompts: 2 prompts x width 3 + 2 rows x width 2 = 10.
    assert b.token_budget_groups(10, share_prompts=True) == [[2, 1], [0]]
    b.episodes[0].extra_mm = [{"pixel_values": torch.ones(1, 3)}]  # an image in a response: no sharing, packed count
    assert b.token_budget_groups(9, share_prompts=True) == [[2, 1], [0]]


def test_prompt_share_maps_rows_to_distinct_prompts():
    b = make_batch()
    share = b.prompt_share()
    assert share.rows.tolist() == [0, 2] and share.of_row.tolist() == [0, 0, 1]
    assert share.images["pixel_values"].shape == (4 + 2, 3)  # each distinct prompt's image once
    assert "pixel_values" not in b.model_inputs(images=False)
    assert b.select([0, 2]).prompt_share() is None  # every row its own prompt


def test_concat_mm_pads_trailing_dims():
    out = concat_mm([{"x": torch.ones(1, 2, 3)}, {"x": torch.ones(1, 4, 3)}])
    assert out["x"].shape == (2, 4, 3) and out["x"][0, 2:].abs().sum() == 0


def test_set_scores_moves_reward():
    b = make_batch()
    b.set_scores(torch.tensor([2.0, 3.0, 4.0]))
    assert b.token_rewards.sum(1).tolist() == [2.0, 3.0, 4.0]
    assert b.token_rewards[0, 2] == 2.0
