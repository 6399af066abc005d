"""Training engine: loop, schedules, sampling, checkpoints, logging, evaluation."""
