"""Every GPU check of issue 12 in one run, in about 8 minutes on one H200, each step inside its own time budget:

  1. ``pytest -m gpu``: the gpu-marked tests (packed = padded under FlashAttention 2 and under PyTorch's own
     varlen kernel, torch_varlen; Liger's kernels against the plain model, float32 and a bf16 LoRA step; Liger's
     fused linear cross-entropy against the answer-position head; QLoRA and Liger training the tiny models, bf16
     training step, GPU memory logging, eval on the GPU);
  2. ``benchmarks/gpu_train.py``: tokens/s, MFU and peak memory, padded vs packed, Liger (its fused loss
     included), LoRA vs QLoRA;
  3. ``benchmarks/eval_generation.py --gpu``: rows/s of batched vs one-at-a-time generation, identical outputs.

Everything lands in ``--out`` (the device tool's $OUT): each step's log, gpu_tests.xml, gpu_train.json,
eval_generation.json and summary.md, the table printed at the end. A missing optional package (flash_attn, Liger,
bitsandbytes) or a step that runs out of time is a "skipped: <why>" line, never the end of the run.

    python benchmarks/gpu_checks.py --out results/  # on a machine with a CUDA GPU
    python benchmarks/gpu_checks.py --smoke         # the steps on the CPU at tiny sizes (tests/test_gpu_checks.py)

On this workplace's device machine (an H200; /work/.library/device/README.md). Its image has torch, transformers,
peft, accelerate, triton and pytest but not hydra-core/omegaconf or rouge-score (validation's rouge_l), and no
flash-attn, liger-kernel or bitsandbytes: they travel as wheels (about 61 MB, 43 of them bitsandbytes'; the working
tree and the wheels must stay under 64 MiB, so leave bitsandbytes out if the tree grows, and the QLoRA items say
"skipped"). Here, once, in the repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 transformers==5.24.0 \\
        peft==0.21.2 liger-kernel==0.8.5 bitsandbytes==0.50.2 nltk==3.10.4 defusedxml==0.7.1
    # sdists only on PyPI, pure Python: built into wheels here (omegaconf's antlr4, validation's rouge-score)
    python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 rouge-score==0.1.2

(transformers and peft: the versions the CPU suite passes with; the image's transformers is older.) flash-attn has
no binary wheel on PyPI (it builds from source for about an hour): its items say "skipped" unless one is carried.
Then one call of the device tool's ``run`` with ``carry: [".whl"]`` and ``timeout_s: 600``:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; python3 benchmarks/gpu_checks.py --out $OUT
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Optional packages and the checks that need them (absent: those checks report "skipped").
OPTIONAL = {"flash_attn": "FlashAttention 2 (packing's varlen test; attn auto)", "liger_kernel": "trainer.liger=true",
            "bitsandbytes": "lora.qlora=true"}


def run_step(name: str, cmd: list[str], budget_s: float, out: Path) -> str:
    """Run ``cmd`` in the repo root with its output in ``out/<name>.log``; stopped after ``budget_s``."""
    log = out / f"{name}.log"
    print(f"\n== {name} (budget {budget_s:.0f} s): {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as sink:
        # Its own process group, so that a step out of time is ended with everything it started.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    print(log.read_text()[-4000:], flush=True)
    took = time.perf_counter() - start
    return f"timed out after {budget_s:.0f} s" if code is None else f"exit {code} in {took:.0f} s"


#: The gpu-marked test files that run first, so that a step out of time loses the whole-run tests (QLoRA, Liger
#: training the tiny models, evaluation) rather than the kernels' comparisons.
FIRST = ("test_torch_varlen.py", "test_models.py", "test_liger.py", "test_packing.py")


def gpu_test_files() -> list[str]:
    files = [path for path in sorted((REPO / "tests").glob("test_*.py")) if "pytest.mark.gpu" in path.read_text()]
    files.sort(key=lambda path: FIRST.index(path.name) if path.name in FIRST else len(FIRST))
    return [str(path.relative_to(REPO)) for path in files]


def packages() -> list[tuple[str, str, str]]:
    rows = []
    for package, needs in OPTIONAL.items():
        try:
            found = f"installed {importlib.metadata.version(package.replace('_', '-'))}"
        except importlib.metadata.PackageNotFoundError:
            found = f"skipped: {package} is not installed ({needs} skipped)"
        rows.append(("packages", package, found))
    return rows


def test_rows(xml: Path, status: str, log: Path | None = None) -> list[tuple[str, str, str]]:
    """One row per gpu-marked test from pytest's JUnit XML: passed, or failed/skipped with the first line why.
    Without the XML (pytest stopped at the step's time limit) the tests that finished come from the verbose log,
    and one row says the rest did not run."""
    if not xml.exists():
        finished = [("pytest -m gpu", name.removeprefix("tests/").replace(".py::", "::"),
                     outcome.lower())
                    for name, outcome in re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)",
                                                    log.read_text() if log and log.exists() else "", re.M)]
        return [*finished, ("pytest -m gpu", "(the rest)", f"no results: {status}")]
    rows = []
    for case in ET.parse(xml).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            rows.append(("pytest -m gpu", name, "passed"))
        else:
            why = (outcome.get("message") or outcome.text or "").strip().splitlines()
            rows.append(("pytest -m gpu", name, f"{'skipped' if outcome.tag == 'skipped' else outcome.tag}: "
                                                f"{why[0][:160] if why else ''}"))
    return rows or [("pytest -m gpu", "(none)", f"no gpu-marked test ran: {status}")]


def train_rows(path: Path, status: str) -> list[tuple[str, str, str]]:
    """gpu_train.py's configurations (tokens/s, MFU, peak reserved) and its targets, from its JSON."""
    if not path.exists():
        return [("gpu_train", "(all)", f"no results: {status}")]
    sys.path[:0] = [str(REPO), str(HERE)]
    from gpu_train import targets  # the targets' one definition

    data = json.loads(path.read_text())
    peak, rows = data["matmul_peak_flops"], []
    for r in data["runs"]:
        if "tokens_per_s" not in r:
            rows.append(("gpu_train", r["name"], f"{'skipped' if 'skipped' in r else 'failed'}: "
                                                 f"{r.get('skipped') or r.get('failed')}"))
            continue
        memory = "" if r["peak_reserved_gib"] is None else f", peak {r['peak_reserved_gib']:.1f} GiB reserved"
        rows.append(("gpu_train", r["name"], f"{r['tokens_per_s']:,.0f} tokens/s, MFU "
                                             f"{100 * r['flops_per_s'] / peak:.1f}%{memory} ({r['attn']})"))
    rows += [("gpu_train", "target", line) for line in targets({r["name"]: r for r in data["runs"]}, peak)]
    return rows


def eval_rows(path: Path, status: str) -> list[tuple[str, str, str]]:
    if not path.exists():
        return [("eval_generation", "(all)", f"no results: {status}")]
    rows = []
    for r in json.loads(path.read_text())["models"]:
        if "rows_per_s_batched" not in r:
            rows.append(("eval_generation", r["model"], f"{'skipped' if 'skipped' in r else 'failed'}: "
                                                        f"{r.get('skipped') or r.get('failed')}"))
            continue
        rows.append(("eval_generation", r["model"], f"{r['rows_per_s_batched']:.2f} rows/s batched ({r['batch_size']}) "
                     f"vs {r['rows_per_s_single']:.2f} one at a time: {r['speedup']:.1f}x; identical token ids "
                     f"{r['identical_rows']}/{r['rows_single']} ({r['dtype']}, {r['attn']})"))
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="where logs and results go (default: $OUT, or temp)")
    parser.add_argument("--smoke", action="store_true", help="the steps on the CPU at tiny sizes: checks the script")
    parser.add_argument("--tests-s", type=float, default=160, help="budget of pytest -m gpu")
    parser.add_argument("--train-s", type=float, default=190,
                        help="budget of gpu_train.py (no configuration starts in its last 40 s, or when the last "
                             "one took longer than the time left)")
    parser.add_argument("--eval-s", type=float, default=150,
                        help="budget of eval_generation.py --gpu (no model starts in its last 90 s)")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="medvl-gpu-checks-"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_checks.py needs a CUDA GPU (or --smoke for the CPU check)")
    py, started = sys.executable, time.perf_counter()
    # Only the files that hold gpu-marked tests: a file the GPU image cannot import (a missing test-only package)
    # is then one error row, not the end of the step. Generation: 32 rows batched (medvl.eval's batch), the
    # first 16 of them one at a time (the slow path). --smoke: one file's gpu tests (skipped on the CPU), two
    # configurations, one tiny model.
    tests = ["tests/test_models.py"] if args.smoke else gpu_test_files()
    train = ["--smoke", "--only", "2b lora packed"] if args.smoke else ["--budget-s", str(args.train_s - 40)]
    gen = (["--smoke", "--models", "2b"] if args.smoke
           else ["--gpu", "--rows", "32", "--single-rows", "16", "--budget-s", str(args.eval_s - 90)])
    status = {
        "tests": run_step("gpu_tests", [py, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                                        "--continue-on-collection-errors",
                                        f"--junitxml={out / 'gpu_tests.xml'}", *tests], args.tests_s, out),
        "train": run_step("gpu_train", [py, "benchmarks/gpu_train.py", *train, "--json",
                                        str(out / "gpu_train.json")], args.train_s, out),
        "eval": run_step("eval_generation", [py, "benchmarks/eval_generation.py", *gen, "--json",
                                             str(out / "eval_generation.json")], args.eval_s, out),
    }
    rows = [*packages(), *test_rows(out / "gpu_tests.xml", status["tests"], out / "gpu_tests.log"),
            *train_rows(out / "gpu_train.json", status["train"]),
            *eval_rows(out / "eval_generation.json", status["eval"])]
    steps = ", ".join(f"{k}: {v}" for k, v in status.items())
    table = ["| step | item | result |", "|---|---|---|", *(f"| {s} | {i} | {r} |" for s, i, r in rows)]
    summary = "\n".join([f"# GPU checks ({'smoke, CPU' if args.smoke else 'GPU'}); {steps}; total "
                         f"{time.perf_counter() - started:.0f} s", "", *table, ""])
    (out / "summary.md").write_text(summary)
    print("\n" + summary, flush=True)
    return rows


if __name__ == "__main__":
    main()
