"""The Ray cluster nbsched runs jobs on: joining it, and numbering its GPUs.

Ray is an optional extra (``pip install -e '.[ray]'`` from a checkout); nothing here imports it
until a scheduler with ``executor="ray"`` needs it, and then a missing Ray raises
:class:`~nbsched.errors.NotSupportedError` naming that command.

Where Ray comes from (``SchedulerConfig.ray_address``):

* ``None``: the Ray already initialised in this process, else a local one started
  here that declares ``num_gpus`` GPUs (4 by default), whether or not they exist;
* ``"auto"`` or ``"host:port"``: join that cluster (``ray start --head`` on one
  machine, ``ray start --address=...`` on the others).

**GPU numbering.**  nbsched's GPU indices (the ``gpu`` column of
``get_gpu_status()``, the ``gpus`` of a job, ``allowed_gpus``, ``pause_gpu``) number
the cluster's GPUs node by node: the head node's Ray GPUs ``0..k-1`` are nbsched
GPUs ``0..k-1``, the next node's follow, and so on (nodes after the head ordered by
host name).  A node that joins later gets the next free numbers; a node that leaves
keeps its numbers, so a running job's GPUs never change meaning.  Each GPU's
``node`` says where it is and its ``name`` carries Ray's id on that node.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import InvalidValueError, NotSupportedError

logger = logging.getLogger(__name__)

RAY_MISSING = (
    "executor='ray' needs Ray, which is not installed in this Python environment: "
    "pip install 'ray>=2.40' (from a checkout of nbsched: pip install -e '.[ray]')"
)

#: GPUs a local Ray declares when the config names no ``num_gpus``.
DEFAULT_LOCAL_GPUS = 4

_HEAD = "node:__internal_head__"


def import_ray() -> ModuleType:
    """The ``ray`` module, or :class:`NotSupportedError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise NotSupportedError(RAY_MISSING) from exc
    return ray


def ray_installed() -> bool:
    try:
        import_ray()
    except NotSupportedError:
        return False
    return True


@dataclass(frozen=True)
class ClusterGpu:
    """One GPU of the cluster."""

    #: nbsched's index for it (see the module doc).
    index: int
    node_id: str
    #: The node as people see it: its host name (with a short node id where hosts repeat).
    node: str
    #: Ray's id for the GPU on its node (what ``CUDA_VISIBLE_DEVICES`` holds there).
    local_id: int
    #: Ray's ``accelerator_type`` for the node (``"A100"``), if it reports one.
    accelerator: str | None = None


class RayCluster:
    """The process's connection to Ray, and the numbering of the cluster's GPUs."""

    def __init__(self, address: str | None, num_gpus: int | None) -> None:
        self.address = address
        self.num_gpus = num_gpus
        self._lock = threading.RLock()
        self._session: str | None = None
        self._slots: dict[tuple[str, int], int] = {}
        self._current: dict[int, ClusterGpu] = {}
        self._labels: dict[str, str] = {}
        #: Whether this process started the Ray it uses (rather than joining one).
        self.started_here = False

    def connect(self) -> ModuleType:
        """Join (or start) Ray once per process; returns the ``ray`` module."""
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                self._init(ray)
            ctx = ray.get_runtime_context()
            session = f"{ctx.gcs_address}/{ctx.get_node_id()}/{ctx.get_job_id()}"
            if session != self._session:  # a new Ray: number its GPUs afresh
                self._session = session
                self._slots.clear()
                self._current.clear()
                self._labels.clear()
        return ray

    def _init(self, ray: ModuleType) -> None:
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if self.address is None:
            gpus = self.num_gpus or DEFAULT_LOCAL_GPUS
            logger.info("nbsched: starting a local Ray that declares %d GPU(s)", gpus)
            # Keep enough idle workers for a GPU's worth of jobs to reuse them (Ray's
            # default keeps one per CPU and ends the others after a second idle).
            keep = max(os.cpu_count() or 1, 2 * gpus)
            try:
                ray.init(num_gpus=gpus, _system_config={"num_workers_soft_limit": keep}, **common)
            except (TypeError, ValueError):  # a Ray that does not know the setting
                ray.init(num_gpus=gpus, **common)
            self.started_here = True
            return
        if self.address != "auto":
            _use_local_token(self.address)
        try:
            ray.init(address=self.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InvalidValueError(
                f"ray_address={self.address!r}: cannot join that Ray cluster ({exc}). Start "
                "one with `ray start --head --num-gpus=N`, or use ray_address=None for a "
                "local Ray"
            ) from exc

    @property
    def gcs_address(self) -> str | None:
        """The address other processes can join this Ray at (``None`` before connecting)."""
        ray = import_ray()
        if not ray.is_initialized():
            return None
        return str(ray.get_runtime_context().gcs_address)

    def gpus(self) -> list[ClusterGpu]:
        """The GPUs of the nodes alive now, by nbsched index."""
        ray = self.connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        hosts = [str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress")) for n in nodes]
        nodes_sorted = sorted(
            zip(nodes, hosts, strict=True),
            key=lambda nh: (_HEAD not in nh[0]["Resources"], nh[1], nh[0]["NodeID"]),
        )
        out: list[ClusterGpu] = []
        with self._lock:
            for node, host in nodes_sorted:
                node_id = str(node["NodeID"])
                label = host if hosts.count(host) == 1 else f"{host}:{node_id[:8]}"
                self._labels[node_id] = label
                resources = node["Resources"]
                accel = next(
                    (k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")),
                    None,
                )
                for local in range(int(resources.get("GPU", 0) + 1e-9)):
                    key = (node_id, local)
                    if key not in self._slots:
                        self._slots[key] = len(self._slots)
                    out.append(ClusterGpu(self._slots[key], node_id, label, local, accel))
            out.sort(key=lambda g: g.index)
            self._current = {g.index: g for g in out}
        return out

    def locate(self, indices: tuple[int, ...]) -> list[ClusterGpu]:
        """The cluster GPUs behind nbsched indices; all must be alive and on one node."""
        with self._lock:
            if any(i not in self._current for i in indices):
                self.gpus()
            missing = [i for i in indices if i not in self._current]
            if missing:
                raise InvalidValueError(
                    f"GPU(s) {missing} are not in the Ray cluster now (their node left?)"
                )
            found = [self._current[i] for i in indices]
        if len({g.node_id for g in found}) != 1:
            raise InvalidValueError(f"GPUs {list(indices)} lie on different nodes of the cluster")
        return found

    def index_of(self, node_id: str, local_id: int) -> int | None:
        """nbsched's index for GPU ``local_id`` of ``node_id``."""
        with self._lock:
            return self._slots.get((node_id, local_id))

    def label(self, node_id: str) -> str:
        with self._lock:
            return self._labels.get(node_id, node_id[:8])

    def alive_nodes(self) -> list[str]:
        ray = self.connect()
        return [str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")]

    def node_id_of(self, label: str | None) -> str | None:
        """The id of the alive node shown as ``label`` (as ``Started.node`` recorded it)."""
        if label is None:
            return None
        with self._lock:
            for node_id, known in self._labels.items():
                if known == label:
                    return node_id
        return None

    def local_node_id(self) -> str:
        """The node this process (the Ray driver) runs on."""
        ray = self.connect()
        return str(ray.get_runtime_context().get_node_id())


def _use_local_token(address: str) -> None:
    """Join a Ray of this machine with this machine's Ray token, as Ray itself does for
    ``"auto"`` (a ``ray.init()`` or ``ray start`` here turns token authentication on
    and keeps the token in ``~/.ray``), but not for an explicit address: so the
    ``nbsched`` command can join the Ray a kernel's engine started."""
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user said
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        import psutil

        local = {"localhost"} | {
            a.address for addrs in psutil.net_if_addrs().values() for a in addrs
        }
        if host not in local:
            return
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception as exc:  # a Ray without token authentication
        logger.debug("no Ray token authentication: %s", exc)


_CLUSTER: RayCluster | None = None
_CLUSTER_LOCK = threading.Lock()


def cluster_for(address: str | None, num_gpus: int | None) -> RayCluster:
    """The process's :class:`RayCluster` (Ray is one connection per process).

    The settings of the latest call are the ones a later ``ray.init`` uses; a Ray
    already running in the process is used as it is.
    """
    global _CLUSTER
    with _CLUSTER_LOCK:
        if _CLUSTER is None:
            _CLUSTER = RayCluster(address, num_gpus)
        else:
            _CLUSTER.address, _CLUSTER.num_gpus = address, num_gpus
        return _CLUSTER
