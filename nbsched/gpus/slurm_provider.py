"""The GPUs of a Slurm cluster, from Slurm's own records, for ``executor="slurm"``.

Each node's GPUs (``scontrol -o show node``: ``Gres=gpu:4,shard:16``) are numbered in
node order, then device order, as one list; who holds each GPU comes from the running
jobs (``squeue``, every user's) and, once per job, the GPUs Slurm gave it
(``scontrol -d show job``: ``GRES=gpu:2(IDX:0-1)``, ``shard:2(IDX:2)``).

Slurm is asked in a background thread, at most once per :data:`REFRESH_S`, and only
while someone looks (it stops after :data:`IDLE_S` without a :meth:`snapshot`): a
dashboard's refresh reads the last answer and never runs a Slurm command.  Memory and
load are not Slurm's to know: ``None``.  Who holds a GPU is in its ``name``
(``"GPU 0 on vm (Slurm: alice job 12, bob job 14: 2/4 shards)"``) and, as records, in
:meth:`SlurmGpuProvider.holders`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..executors.slurm_control import gpu_nodes
from ..executors.slurm_status import (
    SlurmError,
    fields,
    node_gres,
    parse_gres_used,
    parse_idx,
    parse_time,
    slurm,
)
from .base import GpuSnapshot

logger = logging.getLogger(__name__)

REFRESH_S = 1.0
IDLE_S = 30.0


@dataclass(frozen=True)
class Holder:
    """A running Slurm job on a GPU: whose, which, how much of the GPU, since when."""

    gpu: int
    node: str
    job_id: str
    user: str
    share: float
    start: float | None


class SlurmGpuProvider:
    name = "slurm"

    def __init__(self, partition: str | None = None) -> None:
        self.partition = partition
        self.selection_note = "the GPUs of a Slurm cluster"
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reading: tuple[GpuSnapshot, ...] = ()
        self._holders: tuple[Holder, ...] = ()
        self._error: Exception | None = None
        self._asked = time.monotonic()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Slurm job id -> its GRES detail (a running job's GPUs do not change).
        self._job_gres: dict[str, str] = {}

    def is_available(self) -> bool:
        try:
            slurm(["scontrol", "ping"])
        except SlurmError:
            return False
        return True

    def snapshot(self) -> Sequence[GpuSnapshot]:
        """The last reading (the first call waits for one)."""
        with self._lock:
            self._asked = time.monotonic()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="nbsched-slurm-gpus", daemon=True
                )
                self._thread.start()
        self._ready.wait(30.0)
        with self._lock:
            if not self._reading and self._error is not None:
                raise self._error
            return self._reading

    def holders(self) -> tuple[Holder, ...]:
        """Who holds which GPU, as of the last reading."""
        with self._lock:
            return self._holders

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed or time.monotonic() - self._asked > IDLE_S:
                    self._thread = None
                    return
            try:
                reading, holders = self.read()
                with self._lock:
                    self._reading, self._holders, self._error = reading, holders, None
            except Exception as exc:
                with self._lock:
                    self._error = exc
                logger.warning("could not read Slurm's GPUs: %s", exc)
            self._ready.set()
            time.sleep(REFRESH_S)

    def read(self) -> tuple[tuple[GpuSnapshot, ...], tuple[Holder, ...]]:
        """Ask Slurm now: the GPUs of every node (of the partition) and who holds them."""
        nodes = self._nodes()
        first: dict[str, int] = {}
        shards: dict[str, int] = {}
        index = 0
        for name, counts in nodes:
            first[name] = index
            index += counts.get("gpu", 0)
            if counts.get("gpu") and counts.get("shard"):
                shards[name] = counts["shard"] // counts["gpu"]
        holders = self._holders_now(first, shards)
        by_gpu: dict[int, list[Holder]] = {}
        for h in holders:
            by_gpu.setdefault(h.gpu, []).append(h)
        snaps = []
        for name, counts in nodes:
            for local in range(counts.get("gpu", 0)):
                gpu = first[name] + local
                snaps.append(
                    GpuSnapshot(
                        index=gpu,
                        uuid=f"slurm:{name}:{local}",
                        name=_label(name, local, by_gpu.get(gpu, []), shards.get(name)),
                        memory_used_mb=None,
                        memory_total_mb=None,
                        load=None,
                        node=name,
                    )
                )
        self.selection_note = f"Slurm: {len(snaps)} GPU(s) on {len(nodes)} node(s)"
        return tuple(snaps), tuple(holders)

    def _nodes(self) -> list[tuple[str, dict[str, int]]]:
        return gpu_nodes(self.partition)

    def _holders_now(self, first: dict[str, int], shards: dict[str, int]) -> list[Holder]:
        argv = ["squeue", "-h", "-t", "R", "-o", "%A|%u|%S|%N"]
        if self.partition:
            argv += ["-p", self.partition]
        holders: list[Holder] = []
        running = set()
        for line in slurm(argv).splitlines():
            parts = line.split("|")
            if len(parts) < 4 or parts[3] not in first:
                continue
            sid, user, start, node = parts
            running.add(sid)
            detail = self._job_gres.get(sid)
            if detail is None:
                try:
                    out = slurm(["scontrol", "-d", "-o", "show", "job", sid])
                except SlurmError:
                    continue  # (it ended meanwhile)
                detail = self._job_gres[sid] = fields(out).get("GRES", "")
            for kind, count, idx in parse_gres_used(detail):
                for local in idx:
                    share = 1.0 if kind == "gpu" else count / max(1, shards.get(node, 1))
                    holders.append(
                        Holder(first[node] + local, node, sid, user, share, parse_time(start))
                    )
        for sid in set(self._job_gres) - running:
            del self._job_gres[sid]
        return holders

    def close(self) -> None:
        with self._lock:
            self._closed = True


def _label(node: str, local: int, holders: list[Holder], shards: int | None) -> str:
    if not holders:
        return f"GPU {local} on {node} (Slurm: free)"
    parts = []
    for h in holders:
        text = f"{h.user} job {h.job_id}"
        if h.share < 1 and shards:
            text += f": {round(h.share * shards)}/{shards} shards"
        parts.append(text)
    return f"GPU {local} on {node} (Slurm: {', '.join(parts)})"


__all__ = ["Holder", "SlurmGpuProvider", "node_gres", "parse_gres_used", "parse_idx"]
