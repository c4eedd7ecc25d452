"""nodulekit benchmarks: one table, nodulekit vs a tutorial-style Keras build vs MONAI, same machine, one run.

Usage (from the repository root)::

    make bench                                    # = .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/run.py --quick    # short: fewer steps and repeats, small end-to-end rows
    .venv/bin/python benchmarks/run.py --only attention_unet          # one architecture's model rows
    .venv/bin/python benchmarks/run.py --only models,e2e.scan         # row ids or groups, comma-separated
    .venv/bin/python benchmarks/run.py --list                         # the row ids

What it measures (details in benchmarks/README.md):

* model throughput, images/s at 64x64 (training batch 16, inference batch 64) for the U-Net and the
  Attention U-Net: the reference (plain Keras Functional model, NumPy through ``fit``, float32,
  full-resolution gates), nodulekit's default build (its ``TrainConfig`` defaults, ``tf.data``
  pipeline and ``Segmenter``), nodulekit with the proposed changes, MONAI (PyTorch CPU) in float32
  and with bfloat16 autocast. Every row runs in its own process; the rows are timed interleaved
  (repeat k of every row before repeat k+1 of any), warm-up excluded, and the median of the
  repeats is reported; ratios are medians of the per-repeat ratios of the same run;
* end-to-end wall times: imports, 1,000 phantom crops, reading the LIDC dev set, the QUICK
  protocol, one full fold, whole-scan inference;
* peak resident memory of every row (``getrusage`` maxrss of its process, imports included).

The output ends with exactly two lines that scripts can read::

    attention_unet train vs MONAI: 2.71x
    attention_unet infer vs MONAI: 2.84x

(images/s of nodulekit's default build over MONAI's AttentionUnet at the same precision, this run:
MONAI with bfloat16 autocast when nodulekit's default resolves to bfloat16, MONAI in float32 when it
resolves to float32; ``n/a`` without MONAI). Just before them, the float32 pair (nodulekit's default
build forced to float32 against MONAI in float32) in the same format with ``, float32``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from end_to_end import ROWS as E2E_ROWS  # noqa: E402
from throughput import ARCHITECTURES, INFER_BATCH, PROPOSED, TRAIN_BATCH  # noqa: E402

#: Model-throughput implementations in table order, with their labels.
IMPLEMENTATION_LABELS = {
    "reference": "reference: Keras, NumPy fit",
    "nodulekit": "nodulekit default",
    "nodulekit_float32": "nodulekit default, float32",
    "proposed": "nodulekit + proposed",
    "monai": "MONAI (PyTorch)",
    "monai_autocast": "MONAI, autocast",
}
MONAI_NAMES = {"unet": "BasicUNet", "attention_unet": "AttentionUnet"}

E2E_LABELS = {
    "import": "import nodulekit + TensorFlow",
    "phantom": "generate synthetic crops",
    "lidc": "read LIDC dev set",
    "quick_protocol": "QUICK protocol",
    "fold": "one fold, 30 epochs (default)",
    "fold_proposed": "one fold, 30 epochs (proposed)",
    "grid": "4 grid trials, 1 process",
    "grid_workers": "4 grid trials, workers='auto'",
    "scan": "whole-scan inference (default)",
    "scan_proposed": "whole-scan inference (proposed)",
}
E2E_TIMEOUT = {"fold": 3600, "fold_proposed": 3600, "quick_protocol": 1800, "grid": 3600, "grid_workers": 3600}

#: Units of the full paper protocol (2 models x (9 grid trials + 4 folds)), each about one fold's work.
PROTOCOL_UNITS = 2 * (9 + 4)


def all_rows() -> list[str]:
    rows = [f"{arch}.{impl}" for arch in ARCHITECTURES for impl in IMPLEMENTATION_LABELS]
    return rows + [f"e2e.{row}" for row in E2E_ROWS]


def select_rows(only: str | None) -> list[str]:
    """Row ids matching ``--only`` (ids, or groups: models, e2e, an architecture, an implementation)."""
    rows = all_rows()
    if not only:
        return rows
    chosen = []
    for token in (t.strip() for t in only.split(",") if t.strip()):
        if token == "models":
            match = [r for r in rows if not r.startswith("e2e.")]
        else:
            match = [r for r in rows if r == token or r.startswith(token + ".") or r.endswith("." + token)]
        if not match:
            raise SystemExit(f"--only: no row matches {token!r}; rows: {', '.join(rows)}")
        chosen += [r for r in match if r not in chosen]
    return [r for r in rows if r in chosen]


# --------------------------------------------------------------------------------------------------
# Machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return None


def describe_machine() -> dict[str, Any]:
    """Cores, CPU model and flags, memory, GPU, library versions, load (no heavy imports)."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor())
    flags_line = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
    memory_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0)
    gpus = []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "cpu_model": model,
        "cpu_flags": [f for f in wanted if f in flags_line],
        "memory_gb": round(memory_kb / 2**20, 1),
        "gpus": gpus,
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": {m: _version(m) for m in ("numpy", "tensorflow", "keras", "torch", "monai", "jax")},
        "load_average_start": list(os.getloadavg()),
    }


def format_machine(machine: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    load = " / ".join(f"{x:.1f}" for x in machine["load_average_start"])
    lines = [
        f"date:     {machine['date']}   host: {machine['host']}   {machine['os']}   Python {machine['python']}",
        f"CPU:      {machine['cpu_model']}, {machine['cores']} cores ({machine['usable_cores']} usable), {machine['memory_gb']} GB RAM",
        f"flags:    {' '.join(machine['cpu_flags']) or '(none of interest)'}",
        f"GPU:      {'; '.join(machine['gpus']) if machine['gpus'] else 'none'}",
        f"software: {versions}; KERAS_BACKEND={machine['keras_backend']}",
        f"load:     {load} (1/5/15-min load average at start"
        + (f"; {' / '.join(f'{x:.1f}' for x in machine['load_average_end'])} at end)" if "load_average_end" in machine else ")"),
    ]
    if machine["load_average_start"][0] > 0.5 * (machine["usable_cores"] or 1):
        lines.append("          NOTE: the machine was busy with other work; absolute images/s are low and noisy,")
        lines.append("          the interleaved ratios of this run are the numbers to compare.")
    return lines


# --------------------------------------------------------------------------------------------------
# Model-throughput workers


class Worker:
    """A throughput worker process (throughput.py) driven line by line."""

    def __init__(self, row: str, *, train_steps: int, infer_batches: int, log_dir: Path, threads: int = 0, omp_wait: str | None = None):
        self.row = row
        architecture, implementation = row.split(".")
        command = [
            sys.executable, str(HERE / "throughput.py"),
            "--implementation", implementation, "--architecture", architecture,
            "--train-steps", str(train_steps), "--infer-batches", str(infer_batches), "--threads", str(threads),
        ]
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
        if omp_wait and implementation.startswith("monai"):
            environment["OMP_WAIT_POLICY"] = omp_wait
        self.log_path = log_dir / f"{row}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=environment, cwd=str(HERE.parent)
        )

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return {"error": f"failed: no answer within {timeout:.0f} s"}
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if not ready:
                continue
            line = self.process.stdout.readline()
            if not line:
                self.process.wait()
                tail = _tail(self.log_path)
                return {"error": f"failed: worker exited (code {self.process.returncode}) {tail}"}
            if line.startswith("@@"):
                return json.loads(line[2:])

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            return {"error": f"failed: worker gone ({exc})"}
        return self.read(timeout)

    def close(self, timeout: float = 60) -> dict[str, Any]:
        answer = self.ask("quit", timeout) if self.process.poll() is None else {}
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()
        return answer

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _tail(path: Path, lines: int = 3) -> str:
    text = [line for line in _read(str(path)).splitlines() if line.strip() and "cuda" not in line.lower()]
    return " | ".join(text[-lines:])[-400:]


def run_models(
    rows: list[str], *, repeats: int, train_steps: int, infer_batches: int, log_dir: Path, threads: int = 0, omp_wait: str | None = None
) -> dict[str, dict]:
    """Time the model rows, one architecture at a time, interleaved; returns per-row records."""
    results: dict[str, dict] = {}
    for architecture in ARCHITECTURES:
        group = [r for r in rows if r.startswith(architecture + ".")]
        workers = []
        for row in group:  # set up one at a time: a warming-up worker must not slow another's timing
            print(f"  setting up {row} ...", flush=True)
            worker = Worker(row, train_steps=train_steps, infer_batches=infer_batches, log_dir=log_dir, threads=threads, omp_wait=omp_wait)
            answer = worker.read(timeout=900)
            results[row] = {"row": row, "train": [], "infer": [], **answer}
            if "error" in answer:
                worker.kill()
                worker.log.close()
                print(f"    {answer['error']}", flush=True)
                continue
            workers.append(worker)
        for repeat in range(repeats):
            order = workers[repeat % max(1, len(workers)):] + workers[: repeat % max(1, len(workers))]
            for kind in ("train", "infer"):
                for worker in order:
                    if "error" in results[worker.row]:
                        continue
                    answer = worker.ask(kind, timeout=900)
                    if "error" in answer:
                        results[worker.row]["error"] = answer["error"]
                    else:
                        results[worker.row][kind].append(answer)
            print(f"  {architecture}: repeat {repeat + 1}/{repeats} done", flush=True)
        for worker in workers:
            answer = worker.close()
            results[worker.row]["peak_rss_mb"] = answer.get("peak_rss_mb")
    return results


def _rates(record: dict, kind: str) -> list[float]:
    return [r["images"] / r["seconds"] for r in record.get(kind, []) if r.get("seconds")]


def summarize_models(results: dict[str, dict]) -> None:
    """Add medians (images/s, CPU ms per image) to every record in place."""
    for record in results.values():
        for kind in ("train", "infer"):
            rates = _rates(record, kind)
            record[f"{kind}_images_per_second"] = statistics.median(rates) if rates else None
            cpu = [1000 * r["cpu_seconds"] / r["images"] for r in record.get(kind, []) if r.get("images")]
            record[f"{kind}_cpu_ms_per_image"] = statistics.median(cpu) if cpu else None
            record[f"{kind}_spread"] = (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 else None


def cpu_ratio(results: dict[str, dict], numerator: str, denominator: str, kind: str) -> float | None:
    """CPU cost per image of ``denominator`` over that of ``numerator`` (how many times less CPU the first needs).

    On an idle machine images/s scale with 1 / CPU cost when both rows use all cores; on a busy one
    this ratio is the steadier of the two (it does not depend on how much of the CPU a row got).
    """
    a, b = results.get(numerator, {}), results.get(denominator, {})
    ca, cb = a.get(f"{kind}_cpu_ms_per_image"), b.get(f"{kind}_cpu_ms_per_image")
    if not ca or not cb or "error" in a or "error" in b:
        return None
    return cb / ca


def paired_ratio(results: dict[str, dict], numerator: str, denominator: str, kind: str) -> float | None:
    """Median over repeats of the ratio of two rows' images/s (repeat k with repeat k: same load)."""
    a, b = results.get(numerator, {}), results.get(denominator, {})
    if "error" in a or "error" in b:
        return None
    ra, rb = _rates(a, kind), _rates(b, kind)
    pairs = [x / y for x, y in zip(ra, rb) if y > 0]
    return statistics.median(pairs) if pairs else None


# --------------------------------------------------------------------------------------------------
# End-to-end rows


def run_e2e(rows: list[str], *, quick: bool, log_dir: Path) -> dict[str, dict]:
    results = {}
    for row in rows:
        name = row.split(".", 1)[1]
        print(f"  running {row} ...", flush=True)
        command = [sys.executable, str(HERE / "end_to_end.py"), name] + (["--quick"] if quick else [])
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
        log_path = log_dir / f"{row}.log"
        try:
            with open(log_path, "w") as log:
                done = subprocess.run(
                    command, stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
                    cwd=str(HERE.parent), timeout=E2E_TIMEOUT.get(name, 1200),
                )
            lines = [line for line in done.stdout.splitlines() if line.startswith("@@")]
            record = json.loads(lines[-1][2:]) if lines else {"error": f"failed: exit code {done.returncode} {_tail(log_path)}"}
        except subprocess.TimeoutExpired as exc:
            record = {"error": f"failed: timed out after {exc.timeout:.0f} s"}
        if "error" in record:
            print(f"    {record['error']}", flush=True)
        results[row] = {"row": row, **record}
    return results


# --------------------------------------------------------------------------------------------------
# Table


def _number(value: float | None, digits: int = 0, width: int = 8) -> str:
    if value is None:
        return "n/a".rjust(width)
    return f"{value:,.{digits}f}".rjust(width)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_models(results: dict[str, dict], *, repeats: int, train_steps: int, infer_batches: int) -> list[str]:
    lines = [
        f"MODEL THROUGHPUT  64x64x1, widths {'/'.join(map(str, (16, 32, 64, 128, 256)))}; train batch {TRAIN_BATCH} "
        f"({train_steps} steps per repeat), inference batch {INFER_BATCH} ({infer_batches} batches per repeat);",
        f"                  median of {repeats} interleaved repeats after a warm-up; images/s (higher is better)",
        "",
        f"{'model':15s} {'implementation':29s} {'precision':15s} {'train img/s':>11s} {'infer img/s':>11s} "
        f"{'train CPU':>9s} {'infer CPU':>9s} {'peak RSS':>8s}  note",
        f"{'':15s} {'':29s} {'':15s} {'':>11s} {'':>11s} {'ms/img':>9s} {'ms/img':>9s} {'MB':>8s}",
    ]
    for row, record in results.items():
        architecture, implementation = row.split(".")
        label = IMPLEMENTATION_LABELS[implementation]
        if implementation.startswith("monai"):
            label = label.replace("MONAI", f"MONAI {MONAI_NAMES[architecture]}")
        if "error" in record and not record.get("train"):
            lines.append(f"{architecture:15s} {label:29s} {'':15s} {record['error']}")
            continue
        notes = list(record.get("notes", []))
        if "error" in record:
            notes.append(record["error"])
        spread = max(s for s in (record.get("train_spread"), record.get("infer_spread"), 0.0) if s is not None)
        if spread > 0.25:
            notes.append(f"repeats spread {100 * spread:.0f}%")
        lines.append(
            f"{architecture:15s} {label:29s} {str(record.get('precision', '')):15s} "
            f"{_number(record.get('train_images_per_second'), 1, 11)} {_number(record.get('infer_images_per_second'), 1, 11)} "
            f"{_number(record.get('train_cpu_ms_per_image'), 2, 9)} {_number(record.get('infer_cpu_ms_per_image'), 2, 9)} "
            f"{_number(record.get('peak_rss_mb'), 0, 8)}  {'; '.join(notes)}"
        )
    lines.append("")
    lines.append("RATIOS  images/s: median of the per-repeat ratios of this run;  CPU: inverse ratio of CPU ms per image")
    for architecture in ARCHITECTURES:
        pairs = [
            ("nodulekit default / reference", "nodulekit", "reference"),
            ("nodulekit default / MONAI", "nodulekit", "monai"),
            ("nodulekit default / MONAI autocast", "nodulekit", "monai_autocast"),
            ("nodulekit float32 / MONAI", "nodulekit_float32", "monai"),
            ("nodulekit + proposed / reference", "proposed", "reference"),
            ("nodulekit + proposed / MONAI", "proposed", "monai"),
            ("nodulekit + proposed / MONAI autocast", "proposed", "monai_autocast"),
            ("reference / MONAI", "reference", "monai"),
        ]
        for label, a, b in pairs:
            ra, rb = f"{architecture}.{a}", f"{architecture}.{b}"
            if ra not in results or rb not in results:
                continue
            train = paired_ratio(results, ra, rb, "train")
            infer = paired_ratio(results, ra, rb, "infer")
            if train is None and infer is None:
                continue
            cpu_train, cpu_infer = cpu_ratio(results, ra, rb, "train"), cpu_ratio(results, ra, rb, "infer")
            lines.append(
                f"  {architecture:15s} {label:38s} train {_ratio(train):>7s}   infer {_ratio(infer):>7s}"
                f"    CPU: train {_ratio(cpu_train):>7s}   infer {_ratio(cpu_infer):>7s}"
            )
    return lines


def format_e2e(results: dict[str, dict], *, quick: bool) -> list[str]:
    lines = [
        "END TO END" + ("  (--quick: reduced sizes, see notes)" if quick else ""),
        "",
        f"{'task':34s} {'seconds':>9s} {'rate':>16s} {'peak RSS MB':>11s}  note",
    ]
    for row, record in results.items():
        name = row.split(".", 1)[1]
        label = E2E_LABELS[name]
        if "error" in record:
            lines.append(f"{label:34s} {record['error']}")
            continue
        seconds = record["seconds"]
        rate = ""
        if record.get("unit") and record.get("items"):
            basis = record.get("unit_seconds") or record.get("segment_seconds") or seconds
            per = record["items"] / basis if basis else 0
            rate = f"{per:,.2f} {record['unit']}/s" if per < 10 else f"{per:,.0f} {record['unit']}/s"
        lines.append(f"{label:34s} {seconds:9.1f} {rate:>16s} {_number(record.get('peak_rss_mb'), 0, 11)}  {record.get('note', '')}")
        if name in ("fold", "fold_proposed") and record.get("unit_seconds") and not quick:
            estimate = PROTOCOL_UNITS * record["unit_seconds"] / 60
            lines.append(
                f"{'  full paper protocol (estimate)':34s} {estimate * 60:9.0f} {'':>16s} {'':>11s}  "
                f"{PROTOCOL_UNITS} units x this fold = {estimate:.0f} min (target <= 45 min; batch 8 units are slower, 32 faster)"
            )
    serial, parallel = results.get("e2e.grid", {}), results.get("e2e.grid_workers", {})
    if serial.get("seconds") and parallel.get("seconds"):
        lines.append(f"grid trials, workers='auto' vs 1 process: {serial['seconds'] / parallel['seconds']:.2f}x (same trials, same run)")
    return lines


#: The MONAI row at the same precision as a nodulekit row (autocast runs bfloat16 on a CPU, float16 on a GPU).
SAME_PRECISION_MONAI = {"float32": "monai", "mixed_bfloat16": "monai_autocast", "mixed_float16": "monai_autocast"}


def same_precision_monai(results: dict[str, dict], row: str) -> str | None:
    """The MONAI row of ``row``'s architecture that runs at ``row``'s precision (None when not measured)."""
    architecture = row.split(".")[0]
    monai = SAME_PRECISION_MONAI.get(str(results.get(row, {}).get("precision")))
    return f"{architecture}.{monai}" if monai and f"{architecture}.{monai}" in results else None


def final_lines(results: dict[str, dict]) -> list[str]:
    """The closing lines: nodulekit's default against MONAI at the same precision (like for like).

    The last two lines keep their fixed format for scripts (``attention_unet train vs MONAI: N.NNx``);
    they pit nodulekit's default build (bfloat16 on a CPU with native bf16) against MONAI with autocast
    to that precision, or against MONAI in float32 when the default resolves to float32. The float32
    pair (both in float32) is printed just before them.
    """
    lines = []
    for row, label in (("attention_unet.nodulekit_float32", ", float32"), ("attention_unet.nodulekit", "")):
        if label and row not in results:
            continue
        monai = same_precision_monai(results, row)
        train = paired_ratio(results, row, monai, "train") if monai else None
        infer = paired_ratio(results, row, monai, "infer") if monai else None
        precision = results.get(row, {}).get("precision", "?")
        lines.append(f"# {row} ({precision}) against {monai or 'no MONAI row at that precision'}")
        lines += [f"attention_unet train vs MONAI{label}: {_ratio(train)}", f"attention_unet infer vs MONAI{label}: {_ratio(infer)}"]
    return lines


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: 8 steps x 3 repeats, small end-to-end rows")
    parser.add_argument("--only", help="comma-separated row ids or groups (models, e2e, unet, attention_unet, monai, nodulekit, e2e.fold, ...)")
    parser.add_argument("--repeats", type=int, help="timed repeats per model row (default 5; --quick 3)")
    parser.add_argument("--train-steps", type=int, help="training steps per repeat (default 32; --quick 8)")
    parser.add_argument("--infer-batches", type=int, help="inference batches per repeat (default 8; --quick 2)")
    parser.add_argument("--threads", type=int, default=0, help="threads of every library in the model rows (default 0: the core count)")
    parser.add_argument(
        "--omp-wait", choices=("auto", "active", "passive"), default="auto",
        help="OpenMP wait policy of the PyTorch rows; auto: PASSIVE when the 1-min load exceeds the cores "
        "(active spinning collapses PyTorch 10-40x on an oversubscribed machine), else the library default",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results", help="folder for the .txt/.json results")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--list", action="store_true", help="list the row ids and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(all_rows()))
        return 0
    rows = select_rows(args.only)
    repeats = args.repeats or (3 if args.quick else 5)
    train_steps = args.train_steps or (8 if args.quick else 32)
    infer_batches = args.infer_batches or (2 if args.quick else 8)

    machine = describe_machine()
    print("nodulekit benchmark", "(quick)" if args.quick else "", flush=True)
    print("\n".join(format_machine(machine)), flush=True)
    tag = ("gpu" if machine["gpus"] else f"cpu{machine['cores']}") + ("_quick" if args.quick else "")
    stamp = machine["date"][:10]
    log_dir = Path(tempfile.mkdtemp(prefix="nodulekit-bench-logs-"))

    start = time.perf_counter()
    model_rows = [r for r in rows if not r.startswith("e2e.")]
    e2e_rows = [r for r in rows if r.startswith("e2e.")]
    omp_wait = {"active": "ACTIVE", "passive": "PASSIVE"}.get(args.omp_wait)
    if args.omp_wait == "auto" and machine["load_average_start"][0] > (machine["usable_cores"] or 1):
        omp_wait = "PASSIVE"
    machine["threads"] = args.threads or "default (cores)"
    machine["omp_wait_policy_torch"] = omp_wait or "default"
    models = (
        run_models(model_rows, repeats=repeats, train_steps=train_steps, infer_batches=infer_batches, log_dir=log_dir, threads=args.threads, omp_wait=omp_wait)
        if model_rows
        else {}
    )
    summarize_models(models)
    e2e = run_e2e(e2e_rows, quick=args.quick, log_dir=log_dir) if e2e_rows else {}
    machine["load_average_end"] = list(os.getloadavg())
    machine["seconds"] = time.perf_counter() - start

    lines = ["", "=" * 100, f"nodulekit benchmark{' (quick)' if args.quick else ''}", *format_machine(machine), ""]
    if models:
        lines += format_models(models, repeats=repeats, train_steps=train_steps, infer_batches=infer_batches) + [""]
        lines.append(f"threads per row: {machine['threads']}; OpenMP wait policy of the PyTorch rows: {machine['omp_wait_policy_torch']}")
        lines.append(f"proposed = nodulekit defaults + {json.dumps(PROPOSED)} (see benchmarks/README.md)")
        lines.append("")
    if e2e:
        lines += format_e2e(e2e, quick=args.quick) + [""]
    lines.append(f"benchmark wall time {machine['seconds'] / 60:.1f} min")
    failed = any("error" in r and str(r["error"]).startswith("failed") for r in (*models.values(), *e2e.values()))
    if failed:
        lines.append(f"worker logs of this run: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    lines += final_lines(models)
    text = "\n".join(lines)
    if not args.no_save:
        args.output.mkdir(parents=True, exist_ok=True)
        suffix = (f"_threads{args.threads}" if args.threads else "") + ("" if args.only is None else "_" + "-".join(t.strip().replace(".", "-") for t in args.only.split(","))[:60])
        base = args.output / f"{stamp}_{tag}{suffix}"
        base.with_suffix(".txt").write_text(text + "\n")
        payload = {"machine": machine, "settings": {"threads": args.threads, "repeats": repeats, "train_steps": train_steps, "infer_batches": infer_batches, "quick": args.quick, "proposed": PROPOSED}, "models": models, "end_to_end": e2e}
        base.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
        lines.insert(-2, f"results saved to {base}.txt and .json")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
