"""The Slurm settings of the config: ``slurm_partition``, ``slurm_account`` (Slurm
names) and ``slurm_options`` (more ``sbatch`` options, none of those nbsched sets)."""

from __future__ import annotations

import shlex

from ..errors import InvalidValueError

#: The options nbsched sets itself: ``slurm_options`` may not set them too.
OWN_OPTIONS = (
    "--gres",
    "--gpus",
    "-G",
    "--output",
    "-o",
    "--error",
    "-e",
    "--array",
    "-a",
    "--job-name",
    "-J",
    "--parsable",
    "--wrap",
    "--export",
    "--open-mode",
    "--chdir",
    "-D",
    "--nice",
    "--partition",
    "-p",
    "--account",
    "-A",
)


def check_options(name: str, value: object) -> tuple[str, ...]:
    """``slurm_options``: extra ``sbatch`` options, a list of strings each starting with
    ``-`` (``['--time=10', '--qos=short']``), none of those nbsched sets itself."""
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, (list, tuple)):
        raise InvalidValueError(
            f"{name}={value!r}: expected a list of sbatch options, like ['--time=60', '--qos=low']"
        )
    out = []
    for item in value:
        if not isinstance(item, str) or not item.startswith("-") or "\0" in item or "\n" in item:
            raise InvalidValueError(
                f"{name}={value!r}: {item!r}: each item is one sbatch option starting with "
                "'-' (with its value after '=')"
            )
        key = item.split("=", 1)[0]
        if key in OWN_OPTIONS or any(
            key.startswith(short) and len(short) == 2 for short in OWN_OPTIONS if len(short) == 2
        ):
            raise InvalidValueError(
                f"{name}={value!r}: {item!r}: nbsched sets {key} itself (options it sets: "
                f"{', '.join(o for o in OWN_OPTIONS if o.startswith('--'))})"
            )
        out.append(item)
    return tuple(out)


def check_name(name: str, value: object) -> str | None:
    """``slurm_partition`` / ``slurm_account``: a Slurm name, or None for Slurm's default."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() or c in ",=" for c in value):
        raise InvalidValueError(
            f"{name}={value!r}: expected a Slurm {name.split('_')[1]} name (no spaces, commas "
            "or '='), or None for Slurm's default"
        )
    return value


__all__ = ["OWN_OPTIONS", "check_name", "check_options"]
