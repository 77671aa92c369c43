"""Configuration: :class:`SchedulerConfig`, one frozen and validated dataclass.

Every knob of the engine lives here with its default.  Every path derives from
``state_dir`` (default ``$NBSCHED_HOME`` or ``~/.nbsched``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .checks import (
    check_choice,
    check_gpu_arg,
    check_number,
    check_path,
    check_patterns,
    check_requirement,
    check_whole,
)
from .errors import InvalidTypeError, InvalidValueError
from .formats.gpulist import MAX_GPU_ID
from .notify.targets import Email, Webhook, check_default

PROVIDERS = ("auto", "nvml", "gputil", "simulated")
EXECUTORS = ("direct", "screen", "ray", "slurm")
#: Whose environment a job starts from: its submitter's (as ``sbatch``), or the engine's
#: that starts it (the only one before: a job another kernel started lacked what the
#: submitting notebook had set with ``os.environ``).
ENV_POLICIES = ("submitter", "engine")
#: Names (shell wildcards, matched ignoring case) of the submitter's variables that are
#: never written to the state directory: they look like secrets.  A job gets these from
#: the engine that starts it, as before.
DEFAULT_ENV_EXCLUDE = (
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_KEY",
    "*APIKEY*",
)


def default_state_dir() -> Path:
    """``$NBSCHED_HOME`` if set, else ``~/.nbsched``."""
    env = os.environ.get("NBSCHED_HOME")
    return Path(os.path.abspath(Path(env).expanduser())) if env else Path.home() / ".nbsched"


def _default_simulated_file() -> str | None:
    return os.environ.get("NBSCHED_SIMULATED_GPUS") or None


@dataclass(frozen=True)
class SchedulerConfig:
    """Every setting of the scheduler.

    A bad value raises ``ValueError`` (or ``TypeError`` for a wrong type) naming
    the field and what is accepted; an unknown field raises ``TypeError``.
    """

    state_dir: Path = field(default_factory=default_state_dir)
    #: GPUs to schedule on.  ``None``: all the provider sees (simulated: 4, or the file's count).
    num_gpus: int | None = None
    gpu_provider: str = "auto"
    simulated_gpus_file: str | None = field(default_factory=_default_simulated_file)
    executor: str = "direct"
    jobs_file: str | None = None
    llm_config_file: str | None = None
    #: The option each jobs-file line's job gets its local GPU indices with (``"--cuda"``:
    #: ``--cuda 0,1`` appended, as the original program did); None: nothing appended.
    jobs_file_gpu_arg: str | None = None
    #: A GPU whose memory (fraction) used by others is above this gets no new job.
    gpu_memory_threshold: float = 0.8
    #: A GPU whose load (0..1) from others is above this gets no new job.
    gpu_load_threshold: float = 0.8
    #: Fractions are rounded to this step when GPUs are packed.
    gpu_allocation_precision: float = 0.01
    #: How long a GPU reading is reused before the hardware is asked again.
    gpu_monitor_interval_s: float = 1.0
    #: How often a failed job is re-queued (per job overridable).
    max_retries: int = 0
    #: A job that ran out of GPU memory is queued once more with more room (its peak
    #: plus a margin, or a whole GPU), whatever ``max_retries`` says: see docs/memory.md.
    oom_retry: bool = True
    #: Back-off before the first retry; it doubles with each further one.
    retry_backoff_s: float = 1.0
    #: GPUs a job gets when it names none and no ``--llm`` model says otherwise.
    default_requirement: float = 1.0
    #: Seconds between SIGTERM and SIGKILL when a job is cancelled.
    kill_grace_s: float = 5.0
    #: How long the first job in line that cannot start waits before GPUs are held for
    #: it (until then jobs behind it start wherever they fit); 0: at once.  Its wait
    #: from then on is bounded by the longest run (docs/scheduling.md).  Measured best:
    #: 4 to 8 times the median run time (600 s: jobs of a few minutes and more).
    reserve_after_s: float = 600.0
    #: How often the jobs file is checked for change (a stat, not a re-parse).
    jobs_file_poll_s: float = 0.1
    #: Largest sweep accepted unless the caller passes a higher ``limit``.
    max_sweep_jobs: int = 5000
    #: Ray: ``None`` starts (or reuses) a local Ray; ``"auto"`` or an address joins a cluster.
    ray_address: str | None = None
    #: Ray: CPUs each job reserves (Ray's default of 1 caps concurrency at the core count).
    ray_num_cpus: float = 0.01
    #: Slurm (``executor="slurm"``): the partition and account jobs are submitted to
    #: (None: Slurm's defaults), and more ``sbatch`` options (``["--time=60"]``).
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_options: tuple[str, ...] = ()
    #: A job's environment: ``"submitter"``, that of the process that submitted it
    #: (captured at submission, stored once per distinct environment), whichever
    #: engine starts it; ``"engine"``, that of the engine that starts it.
    env_policy: str = "submitter"
    #: The submitter's variables not stored (see :data:`DEFAULT_ENV_EXCLUDE`).
    env_exclude: tuple[str, ...] = DEFAULT_ENV_EXCLUDE
    #: Where the end of a job submitted without ``notify=`` is announced (a sweep's: once,
    #: when its last job ends): ``Webhook`` s, ``Email`` s (:mod:`nbsched.notify`), URLs
    #: or ``mailto:`` addresses (see docs/notifications.md).
    notify: tuple[Webhook | Email, ...] = ()

    def __post_init__(self) -> None:
        # (numbers are stored as plain int and float: numpy's scalars are accepted too)
        set_ = partial(object.__setattr__, self)
        set_("state_dir", check_path("state_dir", self.state_dir))
        if self.num_gpus is not None:
            set_("num_gpus", check_whole("num_gpus", self.num_gpus, 1, MAX_GPU_ID + 1))
        check_choice("gpu_provider", self.gpu_provider, PROVIDERS)
        check_choice("executor", self.executor, EXECUTORS)
        check_choice("env_policy", self.env_policy, ENV_POLICIES)
        set_("env_exclude", check_patterns("env_exclude", self.env_exclude))
        set_("notify", check_default(self.notify))
        self._check_files()
        self._check_slurm()
        set_("jobs_file_gpu_arg", check_gpu_arg(self.jobs_file_gpu_arg, "jobs_file_gpu_arg"))
        for name in ("gpu_memory_threshold", "gpu_load_threshold"):
            set_(name, check_number(name, getattr(self, name), low=0.0, high=1.0, low_open=False))
        set_(
            "gpu_allocation_precision",
            check_number("gpu_allocation_precision", self.gpu_allocation_precision, 0.0, 0.5),
        )
        # (finite, reserve_after_s too: it bounds a blocked job's wait)
        for name in (
            "gpu_monitor_interval_s",
            "retry_backoff_s",
            "kill_grace_s",
            "reserve_after_s",
        ):
            set_(name, check_number(name, getattr(self, name), 0.0, math.inf, low_open=False))
        set_("jobs_file_poll_s", check_number("jobs_file_poll_s", self.jobs_file_poll_s, 0.0, 60.0))
        set_("max_retries", check_whole("max_retries", self.max_retries, 0, 2**63 - 1))
        if not isinstance(self.oom_retry, bool):
            raise InvalidTypeError(f"oom_retry={self.oom_retry!r}: expected True or False")
        set_("max_sweep_jobs", check_whole("max_sweep_jobs", self.max_sweep_jobs, 1))
        set_(
            "ray_num_cpus",
            check_number("ray_num_cpus", self.ray_num_cpus, 0.0, 1024.0, low_open=False),
        )
        set_(
            "default_requirement",
            check_requirement(
                "default_requirement", self.default_requirement, self.gpu_allocation_precision
            ),
        )

    def _check_slurm(self) -> None:
        from .checks.slurm import check_name, check_options

        for name in ("slurm_partition", "slurm_account"):
            object.__setattr__(self, name, check_name(name, getattr(self, name)))
        object.__setattr__(
            self, "slurm_options", check_options("slurm_options", self.slurm_options)
        )

    def _check_files(self) -> None:
        """The file paths (absolute: the kernel may change folder later, and the spawner
        runs in /) and the Ray address."""
        given_jobs_file = self.jobs_file
        for name in ("simulated_gpus_file", "jobs_file", "llm_config_file", "ray_address"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise InvalidTypeError(f"{name}={value!r}: expected a path string or None")
            if value is not None and not os.fspath(value):
                raise InvalidValueError(f"{name}={value!r}: must not be empty (None for none)")
            if value is not None and name != "ray_address":
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(value)))
            elif value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if self.jobs_file and os.path.isdir(self.jobs_file):
            raise InvalidValueError(
                f"jobs_file={given_jobs_file!r}: is a directory; give the path of a jobs file "
                "(one that does not exist yet is watched for until it appears)"
            )

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Per-job exit codes (``<token>.exit``) and the spawner's socket, lock and log."""
        return self.state_dir / "run"

    def replace(self, **changes: Any) -> SchedulerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SchedulerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidTypeError(
                f"unknown SchedulerConfig field(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(known))}"
            )
        return cls(**values)
