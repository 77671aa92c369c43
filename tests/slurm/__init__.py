"""Helpers of the tests against a real one-node Slurm (``scripts/slurm.sh``)."""
