"""Asking Slurm before and around jobs: is a controller there (:func:`admit`, before
jobs for Slurm are stored), how many shards a GPU has, and ``scancel`` in nbsched's
words."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from ..errors import PermissionDeniedError
from ..jobs import JobSpec
from .slurm_script import check_spec
from .slurm_status import SlurmError, fields, node_gres, slurm


def admit(specs: Iterable[JobSpec]) -> list[JobSpec]:
    """Before jobs for Slurm are stored: what Slurm cannot do is refused, and Slurm must
    answer (else a :class:`SlurmError`), so no job is queued that cannot be handed on."""
    specs = list(specs)
    for spec in specs:
        check_spec(spec)
    if specs:
        try:
            controller_answers()
        except SlurmError as exc:
            raise SlurmError(
                f"Slurm does not answer, so no job was queued: {exc}. Jobs already handed "
                "to Slurm are not affected; submit again once Slurm is back"
            ) from None
    return specs


_CONTROLLERS: list[tuple[str, int]] = []


def controller_answers() -> None:
    """Whether a Slurm controller takes connections (a TCP connect: ~0.1 ms, where
    ``scontrol ping`` costs ~15 ms and sbatch waits ~9 s before it gives up); its
    addresses are read from ``scontrol show config`` once per process."""
    if not _CONTROLLERS:
        hosts, port = [], 6817
        for line in slurm(["scontrol", "show", "config"]).splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if key.startswith("SlurmctldHost"):
                name, _, addr = value.partition("(")
                hosts.append(addr.rstrip(")") or name)
            elif key == "SlurmctldPort":
                port = int(value.split("-")[0])
        _CONTROLLERS.extend((host, port) for host in hosts)
    errors = []
    for host, port in _CONTROLLERS:
        try:
            socket.create_connection((host, port), timeout=2.0).close()
            return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise SlurmError(f"slurmctld does not answer ({'; '.join(errors) or 'no controller'})")


def shards_per_gpu() -> int | None:
    """Shards per GPU of the cluster's first node that has both (None: no shards)."""
    for line in slurm(["scontrol", "-o", "show", "node"]).splitlines():
        counts = {}
        for item in fields(line).get("Gres", "").split(","):
            parts = item.split("(")[0].split(":")
            if len(parts) >= 2 and parts[-1].isdigit():
                counts[parts[0]] = int(parts[-1])
        if counts.get("gpu") and counts.get("shard"):
            return counts["shard"] // counts["gpu"]
    return None


def gpu_nodes(partition: str | None) -> list[tuple[str, dict[str, int]]]:
    """The nodes (of ``partition``; None: all) in Slurm's order, each with its GRES
    counts (``{"gpu": 4, "shard": 16}``).  Their GPUs are numbered in this order, then
    device order, as one list: the GPU table's indices and a job's ``gpus``."""
    wanted = None
    if partition:
        out = slurm(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"])
        wanted = {line.strip() for line in out.splitlines() if line.strip()}
    nodes = []
    for line in slurm(["scontrol", "-o", "show", "node"]).splitlines():
        f = fields(line)
        name = f.get("NodeName")
        if name and (wanted is None or name in wanted):
            nodes.append((name, node_gres(f.get("Gres", ""))))
    return nodes


def scancel(sid: str) -> None:
    """Cancel Slurm job ``sid``; Slurm refusing is a PermissionDeniedError."""
    try:
        slurm(["scancel", sid])
    except SlurmError as exc:
        text = str(exc)
        if "ermission" in text or "Access" in text or "not authorized" in text.lower():
            raise PermissionDeniedError(
                f"Slurm job {sid} belongs to another user; Slurm refused to cancel it "
                f"({text.split(': ', 1)[-1]})"
            ) from None
        if "Invalid job id" in text or "already completing or completed" in text:
            return
        raise


__all__ = ["admit", "controller_answers", "gpu_nodes", "scancel", "shards_per_gpu"]
