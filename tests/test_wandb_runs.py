"""W&B runs of a sweep's jobs are told apart, and a failed job's run does not swallow the next job's."""

from __future__ import annotations

from pathlib import Path

from medvl.training import loggers

from .conftest import wandb_records


def test_sweep_jobs_get_distinct_wandb_run_names(compose, tmp_path, no_wandb_login, multirun_context):
    multirun_context("2026-11-25_10-00-00")
    sweep = tmp_path / "sweeps" / "2026-11-25_10-00-00"
    names = set()
    for num, rank in enumerate((4, 8)):
        out = sweep / f"{num}_r{rank}"  # Hydra names it "{num}_lora.r={rank}"
        kwargs = loggers.wandb_init_kwargs(compose(["logger=wandb", f"lora.r={rank}"], output_dir=out), out)
        assert kwargs["group"] == "2026-11-25_10-00-00"
        assert kwargs["name"].startswith("instruct-tiny-")
        names.add(kwargs["name"])
    assert len(names) == 2, names


def test_single_run_name_is_the_config_run_name(compose, tmp_path, no_wandb_login):
    out = tmp_path / "run"
    assert loggers.wandb_init_kwargs(compose(["logger=wandb"], output_dir=out), out)["name"] == "instruct-tiny-auto"


def test_failed_sweep_job_finishes_its_wandb_run(tmp_path, no_wandb_login):
    """A job that fails after wandb.init must not leave its run active: the next job's wandb.init would
    return it (wandb's default ``reinit``), logging the next job into the failed job's run and directory."""
    import wandb

    from medvl.training.sweep import run_sweep_job


    def failing_job(cfg):
        wandb.init(mode="offline", dir=str(tmp_path / "job0"), project="medvl", name="job0")
        raise ValueError("boom")

    assert run_sweep_job(failing_job, None)["status"] == "failed"
    try:
        assert wandb.run is None
        nxt = wandb.init(mode="offline", dir=str(tmp_path / "job1"), project="medvl", name="job1")
        assert Path(nxt.dir).is_relative_to(tmp_path / "job1")
        nxt.finish()
    finally:
        if wandb.run is not None:
            wandb.run.finish()
    wandb.teardown()
    (failed,) = (tmp_path / "job0" / "wandb").glob("offline-run-*")
    assert wandb_records(failed)["exit"][0].exit_code == 1
