"""Multi-process launches: launchers, DeepSpeed configs, one run dir with rank-0 outputs, ZeRO-2/3 on the CPU."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from medvl.config import group_choices
from medvl.training import distributed
from medvl.training.distributed import REPLICA_OVERRIDES, TASK_OVERRIDES, rank_argv, strip_local_rank

from .conftest import REPO

LAUNCHERS = ["single_gpu.sh", "multi_gpu.sh", "multi_node.sh", "deepspeed.sh", "slurm_sweep.sh"]
ZERO_CONFIGS = [c for c in group_choices("deepspeed") if c != "none"]


@pytest.fixture
def dist_env(monkeypatch):
    """A clean rank environment, restored afterwards (strip_local_rank sets LOCAL_RANK, which would make
    later tests' TrainingArguments start torch.distributed); tests set WORLD_SIZE/RANK themselves."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR", "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(var, "")  # records the variable's original state, unset included
        monkeypatch.delenv(var)
    return monkeypatch


# ---------------------------------------------------------------- fast tier


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_is_executable_and_starts_with_its_command(name):
    path = REPO / "launchers" / name
    assert path.is_file() and os.access(path, os.X_OK), path
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert lines[1].startswith("# ") and f"launchers/{name}" in lines[1], lines[1]
    assert "hydra.run.dir=" in path.read_text() or "hydra.sweep.dir=" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_zero_configs_exist_and_start_with_their_command():
    assert set(ZERO_CONFIGS) == {"zero2", "zero2_offload", "zero3", "zero3_offload"}
    for name in ZERO_CONFIGS:
        first = (REPO / "conf" / "deepspeed" / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ") and f"deepspeed={name}" in first, first


def _plain(value) -> bool:
    if isinstance(value, (DictConfig, ListConfig)):
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


@pytest.mark.parametrize("name", ZERO_CONFIGS)
def test_deepspeed_config_reaches_training_arguments_as_a_plain_dict(name, compose, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from medvl.training.run import training_arguments

    cfg = compose([f"deepspeed={name}", "trainer.per_device_train_batch_size=3",
                   "trainer.gradient_accumulation_steps=2", "trainer.max_grad_norm=0.5"])
    ds = OmegaConf.to_container(cfg.deepspeed.config)
    stage = ds["zero_optimization"]["stage"]
    assert stage == (3 if name.startswith("zero3") else 2)
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"

    args = training_arguments(cfg, tmp_path / "out")
    try:
        assert type(args.deepspeed) is dict and _plain(args.deepspeed)
        filled = args.hf_deepspeed_config.config  # "auto" replaced by the trainer's values
        assert filled["train_micro_batch_size_per_gpu"] == 3
        assert filled["gradient_accumulation_steps"] == 2
        assert filled["train_batch_size"] == 3 * 2 * args.world_size
        assert filled["gradient_clipping"] == 0.5
        assert filled["bf16"]["enabled"] is args.bf16 and filled["fp16"]["enabled"] is False
        if "optimizer" in filled:  # the offload configs name DeepSpeed's CPU AdamW
            assert filled["optimizer"]["params"]["lr"] == args.learning_rate
        assert is_deepspeed_zero3_enabled() == (stage == 3)
    finally:
        del args
        gc.collect()
    # The ZeRO-3 switch lives as long as the TrainingArguments: no leak into later tests' from_pretrained.
    assert not is_deepspeed_zero3_enabled()


def test_slurm_launcher_composes(compose, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "gpu-test")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    compose()  # sets MEDVL_CACHE and clears Hydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["output_dir=/tmp/unused", "hydra/launcher=slurm",
                                                "hydra.launcher.gpus_per_node=4", "deepspeed=zero3"],
                            return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4  # one task (rank) per GPU
    assert launcher.partition == "gpu-test" and launcher.timeout_min > 0
    assert cfg.hydra.callbacks.submitit_ranks._target_ == "medvl.training.distributed.SubmititRanks"
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert cfg.deepspeed.name == "zero3"


def test_slurm_launcher_cfg_hydra_from_the_command_line(cache_dir, tmp_path):
    """`python -m medvl.train hydra/launcher=slurm ... --cfg hydra` (Hydra refuses --cfg with -m)."""
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "SBATCH_PARTITION": "gpu-test"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "medvl.train", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=2",
         "deepspeed=zero2", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    launcher = OmegaConf.create(proc.stdout)
    assert launcher.tasks_per_node == 2 and launcher.partition == "gpu-test"
    assert not (tmp_path / "outputs").exists()  # --cfg writes nothing


def test_submitit_tasks_leave_hydra_outputs_to_rank0(compose, dist_env):
    """SubmititRanks adds TASK_OVERRIDES at submission; each task resolves them with its own rank."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    compose()
    master = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra/launcher=slurm"]}}})
    OmegaConf.set_readonly(master, True)
    distributed.SubmititRanks().on_multirun_start(master)
    distributed.SubmititRanks().on_multirun_start(master)  # idempotent
    recorded = OmegaConf.to_container(master.hydra.overrides.hydra)  # as load_sweep_config reads them
    assert recorded == ["hydra/launcher=slurm", *TASK_OVERRIDES]
    subdirs = {}
    for rank in ("0", "1", "3"):
        dist_env.setenv("RANK", rank)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides=["output_dir=/tmp/unused", *recorded],
                                return_hydra_config=True)
        subdirs[rank] = cfg.hydra.output_subdir
    GlobalHydra.instance().clear()
    assert subdirs == {"0": ".hydra", "1": None, "3": None}


def test_local_rank_argument_is_stripped(dist_env):
    assert strip_local_rank(["--local_rank=1", "deepspeed=zero3", "hydra.run.dir=x"]) == [
        "deepspeed=zero3", "hydra.run.dir=x"]
    assert os.environ["LOCAL_RANK"] == "1"
    assert strip_local_rank(["a=1", "--local-rank", "3"]) == ["a=1"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert strip_local_rank(["a=1"]) == ["a=1"]


def test_single_process_command_line_is_untouched(dist_env):
    assert rank_argv(["model=tiny", "-m", "lora=attn,ffn"]) == ["model=tiny", "-m", "lora=attn,ffn"]


def test_ranks_get_one_run_dir_and_only_rank0_writes(dist_env):
    dist_env.setenv("WORLD_SIZE", "2")
    dist_env.setenv("RANK", "0")
    assert rank_argv(["--local_rank=0", "hydra.run.dir=runs/a"]) == ["hydra.run.dir=runs/a"]
    dist_env.setenv("RANK", "1")
    argv = rank_argv(["--local_rank=1", "hydra.run.dir=runs/a", "hydra/job_logging=disabled", "x=1"])
    assert argv == ["hydra.run.dir=runs/a", "x=1", *REPLICA_OVERRIDES]
    assert "hydra.output_subdir=null" in argv and os.environ["LOCAL_RANK"] == "1"
    dist_env.setenv("MEDVL_RUN_DIR", "runs/b")
    assert rank_argv(["x=1"]) == ["x=1", "hydra.run.dir=runs/b", *REPLICA_OVERRIDES]


@pytest.mark.parametrize("argv, message", [
    (["x=1"], "pass hydra.run.dir=DIR"),
    (["-m", "hydra.run.dir=runs/a", "lora=attn,ffn"], "-m/--multirun cannot run inside"),
    (["hydra.run.dir=outputs/${now:%H-%M-%S}"], "differs between ranks"),
])
def test_multi_process_misuse_fails_with_one_line(dist_env, argv, message):
    dist_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        rank_argv(argv)
    text = str(exc.value.code)
    assert message in text and "\n" not in text and text.startswith("medvl: ")


def test_nonzero_rank_writes_no_hydra_output(cache_dir, tmp_path):
    """The real entry point, as the deepspeed launcher starts it in ranks 0 and 1 (stopped before any
    collective by a model path that does not exist): only rank 0's run dir gets .hydra/ and train.log."""
    procs = {}
    for rank in (0, 1):
        env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
        procs[rank] = subprocess.Popen(
            [sys.executable, "-m", "medvl.train", f"--local_rank={rank}", "model.build_tiny=false", "init_from=base",
             f"model.name_or_path={tmp_path / 'no-model'}", f"hydra.run.dir={tmp_path / f'run{rank}'}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {}
    for rank, proc in procs.items():
        outputs[rank] = proc.communicate(timeout=180)[0]
        assert proc.returncode != 0 and "no-model" in outputs[rank], outputs[rank]  # got as far as loading
        assert "unrecognized arguments" not in outputs[rank]
    # The config's warnings once, from rank 0, not once per rank.
    assert [("starts from the base model" in outputs[rank]) for rank in (0, 1)] == [True, False]
    assert (tmp_path / "run0" / ".hydra" / "config.yaml").is_file() and (tmp_path / "run0" / "train.log").is_file()
    assert (tmp_path / "run1").is_dir()
    assert not (tmp_path / "run1" / ".hydra").exists() and not (tmp_path / "run1" / "train.log").exists()


# ---------------------------------------------------------------- slow tier: ZeRO-2/3 in 2 CPU ranks

# 64 training rows, 8 per optimizer step (2 ranks x 4, or 1 process x 8), 16 steps = 2 epochs.
DATA = ["data.num_train=64", "data.num_validation=8", "data.num_test=32"]
STEPS = ["trainer.max_steps=16", "trainer.logging_steps=1", "trainer.save_steps=1000", "lora.dropout=0.0",
         "eval_after_train=false"]


def _launch(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def prebuilt(cache_dir):
    """Tiny model and synth data built once, before any ranks start (no two ranks race to build them)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR
    from medvl.data.splits import ensure_data
    from medvl.models.loading import resolve_model_path

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"cache_dir={cache_dir}", "output_dir=/tmp/unused", *DATA])
    GlobalHydra.instance().clear()
    resolve_model_path(cfg.model)
    ensure_data(cfg.data)
    return cfg


@pytest.fixture(scope="module")
def single_process_run(prebuilt, tmp_path_factory):
    parent = tmp_path_factory.mktemp("single")
    _launch([sys.executable, "-m", "medvl.train", *DATA, *STEPS, "trainer.per_device_train_batch_size=8",
             f"hydra.run.dir={parent / 'run'}"], parent)
    return parent / "run"


@pytest.fixture(scope="module")
def single_process_eval(prebuilt, single_process_run):
    return _evaluate(prebuilt, single_process_run / "adapter")


def _evaluate(cfg, adapter_dir: Path) -> tuple[list[str], dict[str, float]]:
    """The adapter on the tiny base, on the synth test split: greedy answers scored by medvl's metrics,
    and the perplexity of the reference answers (continuous, so it shows differences that 16 steps of
    training leave invisible in the answers)."""
    import torch
    from peft import PeftModel

    from medvl.data.format import answer_of
    from medvl.data.splits import load_split
    from medvl.evaluation.generate import generate
    from medvl.evaluation.metrics import exact_match, word_f1
    from medvl.evaluation.perplexity import answer_nll, corpus_perplexity
    from medvl.models.loading import load_model, load_processor

    model = PeftModel.from_pretrained(load_model(cfg.model), adapter_dir)
    processor = load_processor(cfg.model)
    rows = load_split(cfg.data, cfg.data.eval_split)
    preds = generate(model, processor, rows, cfg.data.root, batch_size=16, max_new_tokens=8)
    with torch.inference_mode():
        nll = answer_nll(model, processor, rows, cfg.data.root)
    refs = [answer_of(r) for r in rows]
    n = len(rows)
    return preds, {"exact_match": sum(map(exact_match, preds, refs)) / n,
                   "word_f1": sum(map(word_f1, preds, refs)) / n,
                   "perplexity": corpus_perplexity(nll)["perplexity"]}


def assert_same_adapter(ours_dir: Path, ref_dir: Path, label: str) -> None:
    import torch
    from safetensors.torch import load_file

    ours = load_file(ours_dir / "adapter_model.safetensors")
    ref = load_file(ref_dir / "adapter_model.safetensors")
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    assert all(ours[k].abs().sum() > 0 for k in ours if "lora_B" in k)  # B starts at zero
    diff = torch.cat([(ours[k] - ref[k]).flatten() for k in ref])
    rel = (diff.norm() / torch.cat([ref[k].flatten() for k in ref]).norm()).item()
    print(f"{label}: LoRA weights vs one process: max |diff| {diff.abs().max().item():.3g}, relative {rel:.3g}")
    assert rel < 1e-4 and diff.abs().max().item() < 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_torchrun_two_ranks_match_one_process(zero, prebuilt, single_process_run, single_process_eval,
                                              tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "medvl.train", f"deepspeed={zero}", *DATA, *STEPS, "trainer.per_device_train_batch_size=4",
             f"hydra.run.dir={parent / 'run'}"], parent)

    # One run directory, one .hydra/, rank 0's outputs in it, nothing written beside it.
    assert [p.name for p in parent.iterdir()] == ["run"]
    run = parent / "run"
    assert len(list(parent.rglob(".hydra"))) == 1 and (run / ".hydra" / "config.yaml").is_file()
    for name in ("config.yaml", "train_metrics.json", "trainer_state.json", "loss.png", "train.log",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json"):
        assert (run / name).is_file(), name
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 16 and state["train_batch_size"] == 4
    assert list(run.glob("checkpoint-16/global_step16/zero_pp_rank_1_*")), "DeepSpeed did not shard over 2 ranks"

    # The weights: gathered from both ranks (ZeRO-3 shards them), trained, and equal to one process's.
    # Same seed, the same 8 samples in each step (accelerate gives rank r every other 4 of the sampler's
    # 8), no dropout: only the order of float32 sums differs (all-reduce vs one batch). Logged losses
    # and grad norms agree to ~1e-7 relative. Adam divides by sqrt(v), so where a gradient is near zero
    # that noise becomes a visible step: measured (2 CPU ranks, zero2 and zero3), 10 of 131072 weights
    # differ by more than 1e-6, the largest by 2.4e-5 / 3.1e-5 (one Adam step here is up to lr = 2e-3),
    # the median by 4e-9, and the whole adapter by 2-2.5e-6 relative (Frobenius). Tolerances: 1e-4
    # relative and 5e-4 absolute, ~40x / ~15x above that, while a real difference (another batch, lr,
    # clipping or a rank's gradients lost) moves the adapter by >1e-2 relative.
    assert_same_adapter(run / "adapter", single_process_run / "adapter", zero)

    ref_losses = [h["loss"] for h in json.loads((single_process_run / "trainer_state.json").read_text())[
        "log_history"] if "loss" in h]
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == len(ref_losses) == 16
    assert max(abs(a - b) / b for a, b in zip(losses, ref_losses)) < 1e-5, (losses, ref_losses)

    # The saved adapter loads onto the tiny base, generates, and evaluates like the single-process one.
    # Weights this close give the same greedy tokens (one of the 32 answers may flip on a near-tie, so
    # exact_match/word_f1 may differ by 1/32) and the same perplexity to 1e-4 relative (measured ~1e-6).
    preds, metrics = _evaluate(prebuilt, run / "adapter")
    ref_preds, ref_metrics = single_process_eval
    agree = sum(a == b for a, b in zip(preds, ref_preds)) / len(ref_preds)
    print(f"{zero}: {metrics} vs one process {ref_metrics}; same answer for {agree:.0%}")
    assert len(preds) == len(ref_preds) == 32 and all(isinstance(p, str) for p in preds)
    assert agree >= 1 - 1 / 32
    for key in ("exact_match", "word_f1"):
        assert abs(metrics[key] - ref_metrics[key]) <= 1 / 32 + 1e-9, key
    assert abs(metrics["perplexity"] / ref_metrics["perplexity"] - 1) < 1e-4


@pytest.mark.slow
def test_submitit_tasks_train_as_ranks(prebuilt, single_process_run, tmp_path):
    """hydra/launcher=slurm's mechanism on this machine: submitit's local executor starts one job with two
    tasks; SubmititRanks makes them ranks 0 and 1 of one ZeRO-2 run in the job's directory."""
    sweep = tmp_path / "sweep"
    _launch([sys.executable, "-m", "medvl.train", "-m", "hydra/launcher=submitit_local",
             "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
             "+hydra.callbacks.submitit_ranks._target_=medvl.training.distributed.SubmititRanks",
             f"hydra.sweep.dir={sweep}", "deepspeed=zero2", *DATA, *STEPS, "trainer.per_device_train_batch_size=4"],
            tmp_path)
    (run,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train_metrics.json").is_file()
    assert list(run.glob("checkpoint-16/global_step16/zero_pp_rank_1_*")), "the two tasks were not two ranks"
    logs = {p.name: p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")}
    rank1 = "".join(text for name, text in logs.items() if name.endswith("_1_log.out"))
    assert logs and "medvl.training.run][INFO]" not in rank1  # rank 1 logs warnings only
    assert_same_adapter(run / "adapter", single_process_run / "adapter", "submitit")
