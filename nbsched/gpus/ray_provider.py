"""The GPUs of a Ray cluster, one snapshot per GPU, for ``executor="ray"``.

Ray knows how many GPUs each node has (declared or detected) but not their memory
or load, so those are ``None``; ``node`` says which node a GPU is on (the allocator
keeps a multi-GPU job within one node) and ``name`` carries Ray's id for the GPU
on its node, e.g. ``"A100 (Ray GPU 1)"``.  The numbering is
:mod:`nbsched.raycluster`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from nbsched.raycluster import RayCluster, ray_installed

from .base import GpuSnapshot


class RayGpuProvider:
    name = "ray"

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self.selection_note = "the GPUs of a Ray cluster"

    def is_available(self) -> bool:
        return ray_installed()

    def snapshot(self) -> Sequence[GpuSnapshot]:
        gpus = self.cluster.gpus()
        nodes = sorted({g.node for g in gpus})
        self.selection_note = f"Ray: {len(gpus)} GPU(s) on {len(nodes)} node(s)"
        return [
            GpuSnapshot(
                index=g.index,
                uuid=f"{g.node_id}:{g.local_id}",
                name=f"{g.accelerator or 'GPU'} (Ray GPU {g.local_id})",
                memory_used_mb=None,
                memory_total_mb=None,
                load=None,
                node=g.node,
            )
            for g in gpus
        ]

    def close(self) -> None:
        """Nothing to release: Ray stays connected for the life of the process."""
