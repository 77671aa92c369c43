"""Dependencies across an engine's death (issue 17): the engine is SIGKILLed as a job a
chain waits for ends (its end not yet recorded), just after it marked a released
dependent running, or with its process group before that job ends (no engine records
the end until the next one starts).  A new engine on the same state directory finishes
the chain.  From the jobs' own marker lines and the store: every job that was to run
ran exactly once, after what it waited for; the one whose dependency failed never ran
and ends ``cancelled`` with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from transitions import history

from nbsched.store import Store

from .harness import Engines, job_command, read_markers, wait_for


def _exit_files(state: Path) -> int:
    return len(list((state / "run").glob("*.exit")))


@pytest.mark.parametrize(
    "crash_at",
    [
        "before_record_end:1",  # job 1 ended; the engine dies before recording it
        "after_mark_running:3",  # job 2 released and marked running; never spawned
        "",  # the engine's process group killed; job 1 ends while no engine runs
    ],
)
def test_a_chain_survives_the_engine_killed(
    tmp_path: Path, engines: Engines, crash_at: str
) -> None:
    markers = tmp_path / "markers"
    gates = [tmp_path / f"gate{i}" for i in range(1, 6)]
    after = [None, "1", None, "3", {"notok": "3"}]
    codes = [0, 0, 4, 0, 0]
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "num_gpus": 2,
        "jobs": [
            {"command": job_command(markers, code, gate), "required_gpus": 1, "after": dep}
            for code, gate, dep in zip(codes, gates, after, strict=True)
        ],
        "wait": "mine",
        "submit_first": True,
    }
    state = Path(cfg["state_dir"])
    if crash_at:
        gates[0].touch()  # job 1 ends at once (jobs 1 and 3 start together; 3 waits)
        a = engines.start(cfg, env={"NBSCHED_TEST_CRASH_AT": crash_at})
        assert a.wait_exit() == -9, "".join(a.stderr)
    else:
        a = engines.start(cfg)
        wait_for(lambda: read_markers(markers)[0].get("1"), what="job 1 to start")
        a.kill_group()
        gates[0].touch()
        wait_for(lambda: _exit_files(state) == 1, what="job 1 to end, no engine running")
    store = Store(state / "state.db")
    one, two = store.get("1"), store.get("2")
    if not crash_at or crash_at.startswith("before_record_end"):
        # one transaction: job 1's end and job 2's release are both unwritten
        assert (one.status.value, two.status.value, two.waiting) == ("running", "queued", True)
        assert _exit_files(state) == 1
    else:
        assert (one.status.value, two.status.value, two.pid) == ("succeeded", "running", None)
    store.close()
    b = engines.start({**cfg, "jobs": [], "wait": "all", "expect_total": 5, "submit_first": False})
    b.event("started")
    for gate in gates:
        gate.touch()
    b.event("done")
    assert b.wait_exit() == 0
    starts, ends, intervals = read_markers(markers)
    assert starts == {"1": 1, "2": 1, "3": 1, "5": 1}, starts
    assert ends == {"1": 1, "2": 1, "3": 1, "5": 1}, ends
    when = {i.job: i for i in intervals}
    assert when["1"].end is not None and when["2"].start >= when["1"].end
    assert when["3"].end is not None and when["5"].start >= when["3"].end
    store = Store(state / "state.db")
    statuses = [store.get(str(i)).status.value for i in range(1, 6)]
    assert statuses == ["succeeded", "succeeded", "failed", "cancelled", "succeeded"]
    assert store.get("4").reason == "dependency 3 failed" and store.get("4").attempts == 0
    for i in ("1", "2", "3", "5"):
        finals = [h for h in history(store.path, i) if h["new"] in ("succeeded", "failed")]
        assert len(finals) == 1, history(store.path, i)
    wait_for(lambda: _exit_files(state) == 0, what="the exit files cleaned up")
    store.close()
