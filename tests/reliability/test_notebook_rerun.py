"""A notebook run again top to bottom after its kernel was killed mid-sweep gets the
whole answer.

A real Jupyter kernel runs a notebook's cells: it starts a scheduler, submits a
12-job sweep on 8 simulated GPUs and is killed (``kill -9`` of its process group, as
Jupyter does on a restart) while 8 jobs run and 4 wait.  A new kernel then runs the
same cells top to bottom.  Its sweep cell submits nothing new but returns all 12 ids,
so its ``%gpusched wait $ids`` waits for the sweep and ``%gpusched results`` has all
12 rows with their metrics.  Before, the sweep cell returned ``[]``, the wait
returned at once and the table showed 4 jobs still running, with no metrics.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nbval.kernel import CURRENT_ENV_KERNEL_NAME, start_new_kernel

from nbsched import GPUJobScheduler, SchedulerConfig

from .harness import REPO, wait_for

#: Each job sleeps this long, then writes its metric: long enough for the kernel to be
#: killed while the first 8 run (also on a busy machine), short enough for ~10 s.
JOB_S = 3.0

JOB = f"""\
import json, os, sys, time
seed = int(sys.argv[2])
time.sleep({JOB_S})
json.dump({{"score": seed * 10}}, open(os.environ["NBSCHED_RESULT_FILE"], "w"))
"""

#: The notebook, a cell a string: what a researcher runs top to bottom.
CELLS = (
    "%load_ext nbsched\n%gpusched start --simulate 8 --state-dir {state}",
    "ids = %gpusched sweep --gpus 1 {script} -- --seed {{1..12}}\nsid = ids.sweep_id",
    "%gpusched wait $ids --timeout 60 --no-progress",
    "table = %gpusched results $sid\n"
    "table.to_json({out!r}, orient='records')\n"
    "open({out!r} + '.ids', 'w').write(json.dumps([list(ids), getattr(ids, 'queued', None)]))",
)


@contextmanager
def _kernel(cwd: Path) -> Iterator[Any]:
    """A kernel in this Python, with this checkout first on its path; its client."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    km, kc = start_new_kernel(kernel_name=CURRENT_ENV_KERNEL_NAME, env=env, cwd=str(cwd))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        km.cleanup_resources()


def _run(kc: Any, code: str) -> None:
    reply = kc.execute_interactive(code, timeout=90, store_history=False)
    content = reply["content"]
    assert content["status"] == "ok", f"{code!r}: {content.get('ename')}: {content.get('evalue')}"


def test_a_notebook_run_again_after_its_kernel_died_gets_every_result(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "table.json"
    script = tmp_path / "job.py"
    script.write_text(JOB)
    cells = [c.format(state=state, script=script, out=str(out)) for c in CELLS]
    with _kernel(tmp_path) as (km, kc):
        _run(kc, "import json")
        for code in cells[:2]:  # started, sweep submitted ...
            _run(kc, code)
        watcher = GPUJobScheduler(
            config=SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=8)
        )
        try:
            wait_for(lambda: watcher.counts()["running"] == 8, what="8 jobs running")
            os.killpg(km.provisioner.pid, signal.SIGKILL)  # ... and the kernel dies
            wait_for(lambda: not km.is_alive(), what="the kernel's end")
            counts = watcher.counts()  # (as the dead engine left them: 8 run, 4 wait)
            assert counts["running"] == 8 and counts["queued"] >= 1, counts
        finally:
            watcher.close()
    with _kernel(tmp_path) as (_, kc):  # the notebook, top to bottom
        _run(kc, "import json")
        for code in cells:
            _run(kc, code)
    table = json.loads(out.read_text())
    assert [row["seed"] for row in table] == list(range(1, 13))
    assert [row["status"] for row in table] == ["succeeded"] * 12
    assert [row.get("score") for row in table] == [seed * 10 for seed in range(1, 13)]
    ids, queued = json.loads(Path(f"{out}.ids").read_text())
    assert len(ids) == 12 and queued == []  # every job was there already
    assert sorted(row["id"] for row in table) == sorted(ids)
