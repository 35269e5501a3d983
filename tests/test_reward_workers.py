"""Reward scoring in worker processes: the same scores as in-process, and a hung or crashing reward costs one response."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rllava.config import ConfigError, load_config
from rllava.pipelines.run import run_experiment
from rllava.rewards import REWARDS, RewardFunction
from rllava.rewards.workers import RewardWorkers

REPO = Path(__file__).resolve().parents[1]
TAGGED_PLUGIN = REPO / "examples" / "plugins" / "tagged_count.py"


@pytest.fixture
def unruly(tmp_path) -> str:
    """A reward file whose function hangs on "hang", kills its process on "die" and raises on "raise"."""
    path = tmp_path / "unruly.py"
    path.write_text(textwrap.dedent("""
        import os, time

        def score(response, answer, **meta):
            if response == "hang":
                time.sleep(600)
            if response == "die":
                os._exit(3)
            if response == "raise":
                raise RuntimeError("reward exploded")
            return float(response.strip() == str(answer))
    """))
    return f"{path}:score"


def test_workers_score_like_the_trainer_process(unruly):
    functions = {"math": 1.0, "count": 0.5, "format": 0.1, unruly: 2.0}
    responses = ["<think>a</think><answer>3</answer>", "7", r"\boxed{\frac{1}{2}}", "raise", "0.5", "x"] * 3
    metas = [{"answer": "3"}, {"answer": "7"}, {"answer": "0.5"}] * 6  # repeated meta objects are sent once
    expected = RewardFunction(functions, on_error=-1.0)(responses, metas)
    pool = RewardWorkers(functions, on_error=-1.0, workers=2, timeout_s=30)
    try:
        assert pool(responses, metas) == expected
        assert expected[2] == 9  # "raise" failed 3 times, count refused the non-integer truth "0.5" 6 times
        assert pool(responses[:2], metas[:2]) == RewardFunction(functions, on_error=-1.0)(responses[:2], metas[:2])
    finally:
        pool.close()


def test_a_hung_reward_is_killed_and_scored_on_error(unruly):
    pool = RewardWorkers({unruly: 1.0, "count": 1.0}, on_error=-1.0, workers=2, timeout_s=1.0)
    try:
        procs = [w.proc for w in pool._workers]
        t0 = time.monotonic()
        scores, infos, n_errors = pool(["3", "hang", "4", "3"], [{"answer": "3"}] * 4)
        elapsed = time.monotonic() - t0
        assert scores == [2.0, -2.0, 0.0, 2.0]  # the others still scored, on the other worker and the fresh one
        assert infos[1] == {unruly: -1.0, "count": -1.0, "accuracy": 0.0, "overall": -2.0}
        assert n_errors == 1 and pool.n_timeouts == 1 and pool.n_crashes == 0
        assert 1.0 <= elapsed < 30  # not the 600 s the reward sleeps
        assert sorted(p.poll() is not None for p in procs) == [False, True]  # the hung one was killed
        assert [p.returncode for p in procs if p.poll() is not None] == [-signal.SIGKILL]
        assert pool(["3"], [{"answer": "3"}])[0] == [2.0]  # and replaced
    finally:
        pool.close()


def test_a_crashing_reward_costs_one_response(unruly, caplog):
    pool = RewardWorkers({unruly: 1.0}, on_error=0.25, workers=1)
    try:
        with caplog.at_level(logging.WARNING, logger="rllava.rewards.workers"):
            scores, _, n_errors = pool(["3", "die", "3"], [{"answer": "3"}] * 3)
        assert scores == [1.0, 0.25, 1.0] and n_errors == 1 and pool.n_crashes == 1
        assert "crashed (status 3)" in caplog.text  # the worker's own exit status (os._exit(3)), not None
    finally:
        pool.close()


def test_failed_rows_count_as_incorrect_under_the_accuracy_key(tmp_path, caplog):
    """As in-process: a row whose accuracy-reporting reward raised, or whose worker died, is incorrect (0)."""
    path = tmp_path / "graded.py"
    path.write_text(textwrap.dedent("""
        import os

        def score(response, answer, **meta):
            if response == "die":
                os._exit(3)
            if response == "raise":
                raise RuntimeError("reward exploded")
            return {"overall": 0.5, "correct": float(response == answer)}
    """))
    functions = {f"{path}:score": 1.0}
    pool = RewardWorkers(functions, on_error=-1.0, workers=1, accuracy_key="correct")
    try:
        with caplog.at_level(logging.WARNING, logger="rllava.rewards.combine"):
            _, infos, n_errors = pool(["die", "raise", "3", "4", "3"], [{"answer": "3", "index": i} for i in range(5)])
    finally:
        pool.close()
    assert n_errors == 2 and [info["correct"] for info in infos] == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert "failed on row 1 (scored -1.0" in caplog.text  # the raising row, named from a worker too
    local = RewardFunction(functions, on_error=-1.0, accuracy_key="correct")
    assert [i["correct"] for i in local(["raise", "3", "4", "3"], [{"answer": "3"}] * 4)[1]] == [0.0, 1.0, 0.0, 1.0]


def test_plugin_rewards_reach_the_workers():
    from rllava.config import import_plugins

    import_plugins([str(TAGGED_PLUGIN)])
    pool = RewardWorkers({"tagged_count": 1.0}, workers=1, plugins=[str(TAGGED_PLUGIN)])
    try:
        assert pool(["<answer>4</answer>", "4"], [{"answer": "4"}] * 2)[0] == [1.0, 0.0]
    finally:
        pool.close()


def test_reward_kwargs_reach_the_workers():
    response, row = "<answer>[0, 0, 10, 10]</answer>", {"answer": "[[0, 0, 10, 12]]"}
    kwargs = {"detection": {"iou_threshold": 0.9}}
    pool = RewardWorkers({"detection": 1.0}, workers=1, kwargs=kwargs)
    try:
        scores, infos, _ = pool([response], [row])
    finally:
        pool.close()
    assert infos[0]["detection/f1"] == 0.0 == RewardFunction({"detection": 1.0}, kwargs=kwargs).score_one(response, row)[1]["detection/f1"]
    assert RewardFunction({"detection": 1.0}).score_one(response, row)[1]["detection/f1"] == 1.0


def test_a_reward_only_in_the_calling_process_is_a_clear_error():
    @REWARDS.register("only_here_for_this_test")
    def only_here(response, answer, **meta):
        return 1.0

    with pytest.raises(ConfigError, match="only_here_for_this_test.*plugins file"):
        RewardWorkers({"only_here_for_this_test": 1.0}, workers=1)


@pytest.mark.parametrize("overrides, message", [
    (["reward.timeout_s=5"], "needs reward.workers >= 1"),
    (["reward.workers=-1"], "reward.workers=-1"),
    (["reward.workers=1", "reward.timeout_s=0"], "reward.timeout_s=0"),
])
def test_worker_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_workers_die_with_the_trainer(unruly, tmp_path):
    """SIGKILL the process that owns the pool while a worker is inside a reward that never returns."""
    pids = tmp_path / "pids.json"
    script = textwrap.dedent(f"""
        import json
        from rllava.rewards.workers import RewardWorkers
        pool = RewardWorkers({{{unruly!r}: 1.0}}, workers=1)
        open({str(pids)!r}, "w").write(json.dumps([w.proc.pid for w in pool._workers]))
        pool(["hang"], [{{"answer": "3"}}])
    """)
    owner = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = json.loads(pids.read_text())[0]
    time.sleep(0.5)  # the worker is now sleeping inside the reward
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (its parent, init here, reaps it later)


def test_stopping_a_worker_ends_the_processes_its_reward_started(tmp_path):
    """A reward that runs a child (a checker, the response's code): a timeout, a crash or close() ends the child
    too, not just the worker."""
    path = tmp_path / "spawner.py"
    path.write_text(textwrap.dedent(f"""
        import os, subprocess, sys

        def score(response, answer, **meta):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            with open({str(tmp_path)!r} + "/" + response, "w") as f:
                f.write(str(child.pid))
            if response == "hang":
                child.wait()
            if response == "die":
                os._exit(3)
            return 1.0  # "leave": returns with the child still running
    """))
    pool = RewardWorkers({f"{path}:score": 1.0}, on_error=-1.0, workers=1, timeout_s=1.0)
    children = []
    try:
        assert pool(["hang", "die", "leave"], [{"answer": "1"}] * 3)[0] == [-1.0, -1.0, 1.0]
        assert pool.n_timeouts == 1 and pool.n_crashes == 1
        children = [int((tmp_path / name).read_text()) for name in ("hang", "die", "leave")]
        pool.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.05)
        assert [_alive(pid) for pid in children] == [False, False, False]
    finally:
        pool.close()
        for pid in children:  # should the fix regress: do not leave sleepers behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_training_with_reward_workers_matches_in_process(short_counting_run, unruly):
    """The same seed gives the same run whether rewards are scored in the trainer or in two workers."""
    rows = {}
    for name, extra in (("inproc", []), ("workers", ["reward.workers=2", "reward.timeout_s=60"])):
        over = short_counting_run(f"trainer.experiment_name={name}", f"reward.functions={{count: 1.0, {unruly}: 0.5}}",
                                  *extra)
        result = run_experiment(load_config(None, over))
        rows[name] = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rows = {k: [r for r in v if "reward/mean" in r] for k, v in rows.items()}
    assert len(rows["inproc"]) == len(rows["workers"]) == 2
    for a, b in zip(rows["inproc"], rows["workers"]):
        for key in ("reward/mean", "reward/count", "actor/loss", "actor/grad_norm"):
            assert a[key] == b[key], key
    assert rows["workers"][-1]["reward/timeouts_total"] == 0.0
    assert "reward/timeouts_total" not in rows["inproc"][-1]


def test_workers_route_rows_by_data_source(unruly):
    """`reward.by_source` reaches the workers; a timed-out row is scored by its own source's components."""
    functions, by_source = {"count": 1.0}, {"geometry": {"math": 2.0, unruly: 1.0}}
    responses = ["<answer>3</answer>", "2.5", "hang", "<answer>4</answer>"]
    metas = [{"answer": "3", "data_source": "counting"}, {"answer": "2.5", "data_source": "geometry"},
             {"answer": "2.5", "data_source": "geometry"}, {"answer": "3", "data_source": "counting"}]
    local = RewardFunction(functions, on_error=-1.0, by_source=by_source)
    pool = RewardWorkers(functions, on_error=-1.0, workers=2, timeout_s=2.0, by_source=by_source)
    try:
        assert pool(responses[:2], metas[:2]) == local(responses[:2], metas[:2])
        scores, infos, n_errors = pool(responses, metas)
        assert scores[:2] == [1.0, 2.0 + 1.0] and scores[3] == 0.0  # math and unruly both 1 on "2.5"
        assert infos[2] == {"math": -1.0, unruly: -1.0, "accuracy": 0.0, "overall": -3.0} and n_errors == 1
    finally:
        pool.close()
