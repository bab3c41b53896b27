"""The encode job's driver: planning (identity, resume, rethresholding), the Ray session, the runner
that schedules shards on actors (timeouts, retries, interrupts), progress, and the summary."""
