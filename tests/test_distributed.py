"""Tests of nodulekit.training.distributed: strategies, mixed precision, KerasTuner across processes.

Every test that needs its own TensorFlow runtime (logical devices, a cluster) runs in subprocesses
so it cannot disturb the other tests; they all train the tiny model of test_training.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nodulekit.errors import InvalidParameterError
from nodulekit.training import TrainConfig, precision_policy, resolve_precision, worker_role
from nodulekit.precision import cpu_supports_bfloat16

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import TINY_CROPS_SOURCE  # noqa: E402  (one definition of the tiny data)

# float32: the strategy comparison needs exact arithmetic (bfloat16's 8-bit mantissa makes the two
# replicas' summation orders differ by ~1e-2, which says nothing about the strategy). No batch norm:
# under MirroredStrategy each replica normalises with its own half-batch's statistics (as PyTorch
# DDP does), so it differs from one device by design.
ONE_TRIAL = dict(  # model_options first: the templates below turn "}}" into "}"
    model_options={"batch_norm": False},
    architectures=("unet",), learning_rates=(1e-2,), batch_sizes=(6,), grid_epochs=2, filters=(4, 8, 16), mixed_precision="float32", workers=1,
)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _result(process: subprocess.Popen, timeout: float = 400) -> dict:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    line = [line for line in out.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------------------------------------
# Roles and precision (no training)


def test_worker_role_follows_tf_config():
    assert worker_role(None) == (True, 0)

    def strategy(task_type, task_id, cluster):
        spec = SimpleNamespace(as_dict=lambda: cluster)
        return SimpleNamespace(cluster_resolver=SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec))

    workers = {"worker": ["a:1", "b:2"]}
    assert worker_role(strategy("worker", 0, workers)) == (True, 0)
    assert worker_role(strategy("worker", 1, workers)) == (False, 1)
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert worker_role(strategy("chief", 0, with_chief)) == (True, 0)
    assert worker_role(strategy("worker", 0, with_chief)) == (False, 0)


def test_precision_names():
    assert resolve_precision(None) == resolve_precision("float32") == "float32"
    assert resolve_precision("mixed_float16") == "mixed_float16"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(InvalidParameterError, match="mixed_precision"):
        resolve_precision("half")


@pytest.mark.parametrize(
    ("gpus", "bf16_cpu", "expected"),
    [
        (["/physical_device:GPU:0"], True, "mixed_float16"),  # a GPU wins whatever the CPU
        (["/physical_device:GPU:0"], False, "mixed_float16"),
        ([], True, "mixed_bfloat16"),  # no GPU, a CPU with native bfloat16
        ([], False, "float32"),  # no GPU, an older CPU
    ],
)
def test_auto_precision_on_simulated_machines(monkeypatch, gpus, bf16_cpu, expected):
    """The three branches of "auto", on a faked device list and a faked CPU check (any real machine)."""
    import tensorflow as tf

    from nodulekit import precision

    real = tf.config.list_physical_devices

    def devices(kind=None):
        return list(gpus) if kind == "GPU" else real(kind)

    monkeypatch.setattr(tf.config, "list_physical_devices", devices)
    monkeypatch.setattr(precision, "cpu_supports_bfloat16", lambda: bf16_cpu)
    assert resolve_precision("auto") == expected
    with precision_policy("auto") as policy:
        import keras

        assert policy == expected and keras.mixed_precision.global_policy().name == expected


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
        ("flags\t\t: fpu sse2 avx2 avx512f\n", False),
        (None, False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_cpu_supports_bfloat16_reads_the_cpu_flags(monkeypatch, cpuinfo, expected):
    import io

    from nodulekit import precision

    def fake_open(path, *args, **options):
        assert path == "/proc/cpuinfo"
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(precision, "open", fake_open, raising=False)
    assert cpu_supports_bfloat16() is expected


def test_make_strategy_by_name(monkeypatch):
    import tensorflow as tf

    from nodulekit.training import make_strategy

    assert make_strategy(None) is None and make_strategy("") is None and make_strategy("none") is None
    mirrored = make_strategy("mirrored")  # every local device: the CPU here
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync >= 1
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InvalidParameterError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(InvalidParameterError, match="strategy must be one of"):
        make_strategy("horovod")


def test_mixed_bfloat16_keeps_the_last_layer_and_the_loss_in_float32():
    import keras

    from nodulekit.losses import get_loss
    from nodulekit.models import build_model

    before = keras.mixed_precision.global_policy().name
    with precision_policy("mixed_bfloat16") as policy:
        assert policy == "mixed_bfloat16"
        model = build_model("attention_unet", (32, 32, 1), filters=(4, 8, 16))
        loss = get_loss("focal_tversky")
    assert keras.mixed_precision.global_policy().name == before  # restored
    assert model.get_layer("down_1_1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("down_1_1_conv").variable_dtype == "float32"  # master weights stay float32
    prediction = model(np.zeros((2, 32, 32, 1), np.float32))
    assert str(prediction.dtype) == "<dtype: 'float32'>" or "float32" in str(prediction.dtype)
    value = loss(np.zeros((2, 32, 32, 1), np.float32), prediction)
    assert "float32" in str(value.dtype)


def test_a_unit_trains_in_mixed_bfloat16(tmp_path):
    import keras

    from nodulekit.training import UnitData, UnitSpec, train_unit

    namespace: dict = {}
    exec(TINY_CROPS_SOURCE, namespace)
    crops = namespace["tiny_crops"](24)
    images = (crops.images - crops.images.mean()) / crops.images.std()
    data = UnitData(images[:16], crops.masks[:16], images[16:], crops.masks[16:], fingerprint="bf16")
    config = TrainConfig(**dict(ONE_TRIAL, mixed_precision="mixed_bfloat16"))
    record = train_unit(UnitSpec("grid", "unet", 1e-2, 8, 1), data, folder=tmp_path, config=config)
    assert record["status"] == "ok" and np.isfinite(record["best_val_loss"])
    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    assert model.get_layer("down_1_1_conv").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("mask").dtype_policy.name == "float32"  # the last layer stays float32
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


# ------------------------------------------------------------------------------------------------
# tf.distribute


MIRRORED = TINY_CROPS_SOURCE + '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from nodulekit.training import TrainConfig, grid_search
config = TrainConfig(**{config!r})
tables = {}
for name, strategy in (("none", None), ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    grid = grid_search(tiny_crops(), run_dir=sys.argv[1] + "/" + name, config=config, strategy=strategy, progress=False)
    tables[name] = grid.drop(columns=["seconds"]).to_dict(orient="records")
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    tables[name + "_replicas"] = replicas
print("RESULT " + json.dumps(tables), flush=True)
'''.replace("{config!r}", repr(ONE_TRIAL))


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_matches_no_strategy(tmp_path):
    """Tolerance: 1e-5 on losses and metrics (the two replicas' gradients are averaged).

    30 training and 9 validation crops in batches of 6: no batch leaves a replica empty, so no
    batch is dropped and both runs see the same data.
    """
    result = _result(_python(MIRRORED, str(tmp_path)))
    assert result["mirrored_replicas"] == 2
    plain, mirrored = result["none"][0], result["mirrored"][0]
    assert plain["status"] == mirrored["status"] == "ok"
    for key, value in plain.items():
        if isinstance(value, float):
            assert mirrored[key] == pytest.approx(value, abs=1e-5), key
    histories = [np.loadtxt(tmp_path / name / "grid/unet/lr=0.01_bs=6/history.csv", delimiter=",", skiprows=1) for name in ("none", "mirrored")]
    np.testing.assert_allclose(histories[0][:, :-1], histories[1][:, :-1], atol=1e-5)  # last column: seconds


MULTI_WORKER = TINY_CROPS_SOURCE + '''
import json, sys
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from nodulekit.training import TrainConfig, grid_search, worker_role
config = TrainConfig(**{config!r})
grid = grid_search(tiny_crops(), run_dir=sys.argv[1], config=config, strategy=strategy, progress=False)
chief, task = worker_role(strategy)
print("RESULT " + json.dumps({{"chief": chief, "task": task, "replicas": strategy.num_replicas_in_sync,
                               "val_dice": grid["val_dice"].tolist(), "best_val_loss": grid["best_val_loss"].tolist()}}), flush=True)
'''.replace("{config!r}", repr(ONE_TRIAL)).replace("{{", "{").replace("}}", "}")


@pytest.mark.slow
def test_multi_worker_strategy_with_two_local_workers_finishes(tmp_path):
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = [
        _python(
            MULTI_WORKER,
            str(run_dir),
            env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}), "TMPDIR": str(scratch)},
        )
        for index in range(2)
    ]
    chief, worker = (_result(p) for p in processes)
    assert (chief["chief"], chief["task"], worker["chief"], worker["task"]) == (True, 0, False, 1)
    assert chief["replicas"] == worker["replicas"] == 2
    # The workers trained one model in lockstep: the same scores on both.
    assert chief["best_val_loss"] == pytest.approx(worker["best_val_loss"], abs=1e-6)
    unit = run_dir / "grid/unet/lr=0.01_bs=6"
    assert json.loads((unit / "done").read_text())["status"] == "ok" and (unit / "best.keras").exists()
    assert list(scratch.iterdir()) == []  # the non-chief's scratch copy was removed


# ------------------------------------------------------------------------------------------------
# KerasTuner: grid trials spread over processes


TUNER = TINY_CROPS_SOURCE + '''
import json, os, sys
from nodulekit.training import TrainConfig, grid_search, tune_grid_distributed
config = TrainConfig(**{config!r})
outcome = tune_grid_distributed(tiny_crops(), run_dir=sys.argv[1], config=config)
result = {{"id": os.environ["KERASTUNER_TUNER_ID"], "outcome": outcome}}
if outcome is None:  # the chief: every trial is finished, the grid table is read back
    grid = grid_search(tiny_crops(), run_dir=sys.argv[1], config=config, progress=False)
    result["status"] = grid["status"].tolist()
print("RESULT " + json.dumps(result), flush=True)
'''.replace("{config!r}", repr(dict(ONE_TRIAL, learning_rates=(1e-3, 1e-2), grid_epochs=1))).replace("{{", "{").replace("}}", "}")


@pytest.mark.slow
def test_keras_tuner_chief_and_worker_share_the_grid(tmp_path):
    pytest.importorskip("keras_tuner", reason="the distributed grid needs KerasTuner (pip install keras-tuner)")
    port = str(_free_port())
    processes = [
        _python(TUNER, str(tmp_path), env={"KERASTUNER_TUNER_ID": name, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port})
        for name in ("chief", "tuner0")
    ]
    chief, worker = (_result(p) for p in processes)
    assert chief["outcome"] is None and chief["status"] == ["ok", "ok"]
    assert worker["outcome"] == {"trials": 2}  # the worker trained both trials the chief handed out
    for rate in ("0.001", "0.01"):
        assert (tmp_path / f"grid/unet/lr={rate}_bs=6/done").exists()


def test_tune_grid_distributed_needs_keras_tuner(monkeypatch, tmp_path):
    from nodulekit.errors import TrainingError
    from nodulekit.training import tune_grid_distributed

    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # as if not installed
    with pytest.raises(TrainingError, match="pip install keras-tuner"):
        tune_grid_distributed(None, run_dir=tmp_path, config=TrainConfig(**ONE_TRIAL))
