"""Model-throughput rows of the benchmark: one worker process per (implementation, architecture).

``run.py`` starts one worker per row and drives them in turn over stdin/stdout, so that the rows
are timed *interleaved* (repeat 1 of every row, then repeat 2, ...): on a shared machine a burst of
load then hits every row alike, and the ratios of one run stay meaningful. Each worker builds its
model, runs one untimed warm-up epoch and one untimed warm-up inference pass (tracing, oneDNN
primitive creation, PyTorch allocator), answers ``ready``, then for every ``train`` / ``infer``
line it reads runs one timed repeat and answers with the wall and CPU seconds; ``quit`` answers
with the process's peak resident memory (``getrusage`` maxrss).

Implementations
---------------
``reference``
    :func:`reference.build_reference` (tutorial-style Keras model, full-resolution gates),
    float32, NumPy arrays through ``model.fit(x, y, batch_size=16)`` and ``model.predict``.
``nodulekit``
    As nodulekit trains: ``TrainConfig()`` defaults (precision policy, augmentation, metrics,
    determinism), ``nodulekit.models.build_model``, its ``tf.data`` pipeline
    (``nodulekit.training.make_dataset``, one dataset and one ``fit`` call per epoch as
    ``train_unit`` does) and its inference path (``nodulekit.inference.Segmenter.predict`` on
    64x64 crops: one window per crop, batch 64).
``proposed``
    ``nodulekit`` plus the changes prototyped in :mod:`variants` (see ``PROPOSED`` below).
``monai``
    MONAI's ``AttentionUnet`` (or ``BasicUNet``, its two-convolutions-per-level U-Net with 1.95 M
    parameters like nodulekit's, for the plain U-Net; MONAI's ``UNet`` is a lighter design with one
    strided convolution per level and 0.66 M parameters), same widths, PyTorch,
    float32, ``torch.set_num_threads(cores)``, a plain loop over pre-made tensors (no
    ``DataLoader``), ``model.eval()`` + ``torch.inference_mode()`` for inference.

Backends: the ``reference`` row and the models are pure Keras; under ``KERAS_BACKEND=jax`` (the
GPU machine has no TensorFlow) the ``nodulekit`` rows fall back to NumPy input and
``model.predict``, and say so in their note.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

__all__ = ["IMPLEMENTATIONS", "ARCHITECTURES", "PROPOSED", "synthetic_crops", "make_bench", "main"]

#: Row implementations, in table order.
IMPLEMENTATIONS = ("reference", "nodulekit", "nodulekit_float32", "proposed", "monai")

#: Architectures, in table order.
ARCHITECTURES = ("unet", "attention_unet")

#: What the ``proposed`` row changes relative to nodulekit's defaults (see variants.py and README).
PROPOSED = {
    "mixed_precision": "auto",  # TrainConfig.mixed_precision default: bfloat16 on AVX512-BF16/AMX CPUs, float16 on GPUs
    "batched_augmentation": True,  # training/data.py: augment whole batches, one warp per batch
    "model": {},  # keyword options of variants.build_variant; {} = nodulekit's own build_model
}

TRAIN_BATCH = 16
INFER_BATCH = 64
SIZE = 64
FILTERS = (16, 32, 64, 128, 256)
_REPLY = "@@"  # prefix of protocol lines on stdout (libraries may print too)


def synthetic_crops(n: int, *, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` z-scored noisy crops with one bright disc each and its mask (throughput does not depend on content)."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size]
    centres = rng.uniform(size * 0.3, size * 0.7, (n, 2))
    radii = rng.uniform(2.0, size * 0.2, n)
    masks = ((rows - centres[:, 0, None, None]) ** 2 + (columns - centres[:, 1, None, None]) ** 2) <= radii[:, None, None] ** 2
    images = rng.normal(0.0, 1.0, (n, size, size)).astype(np.float32) + 2.0 * masks
    images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True)
    return images.astype(np.float32), masks.astype(np.uint8)


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _accelerator() -> str | None:
    """'gpu' when the Keras backend sees a GPU, else None."""
    backend = _backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return "gpu" if tf.config.list_physical_devices("GPU") else None
        if backend == "jax":
            import jax

            return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else None
        if backend == "torch":
            import torch

            return "gpu" if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no accelerator information means none
        return None
    return None


def _resolve_precision(name: str | None) -> str:
    """nodulekit's precision choice (``resolve_precision``), also without TensorFlow."""
    if _backend() == "tensorflow":
        from nodulekit.training.distributed import resolve_precision

        return resolve_precision(name)
    if name in (None, "float32"):
        return "float32"
    if name != "auto":
        return name
    if _accelerator() == "gpu":
        return "mixed_float16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


# --------------------------------------------------------------------------------------------------
# Keras rows


class KerasBench:
    """One Keras row: a compiled model and its data; ``train``/``infer`` run one repeat each."""

    def __init__(self, implementation: str, architecture: str, *, train_steps: int, infer_batches: int, seed: int = 0):
        import keras

        self.implementation = implementation
        self.architecture = architecture
        self.notes: list[str] = []
        self.seed = seed
        self.tensorflow = _backend() == "tensorflow"
        n_train, n_infer = train_steps * TRAIN_BATCH, infer_batches * INFER_BATCH
        self.train_images, self.train_masks = synthetic_crops(n_train, seed=seed)
        self.infer_images, _ = synthetic_crops(n_infer, seed=seed + 1)
        self.n_train, self.n_infer = n_train, n_infer
        keras.utils.set_random_seed(seed)

        if implementation == "reference":
            self._setup_reference()
        elif implementation in ("nodulekit", "nodulekit_float32", "proposed"):
            self._setup_nodulekit(proposed=implementation == "proposed", float32=implementation == "nodulekit_float32")
        else:
            raise ValueError(f"not a Keras implementation: {implementation!r}")

    # -- setup ---------------------------------------------------------------------------------
    def _setup_reference(self) -> None:
        import keras

        from reference import build_reference

        try:
            from nodulekit.losses import focal_tversky as loss
        except ImportError:  # the loss costs < 1 % of a step; any region loss will do
            loss = "binary_crossentropy"
            self.notes.append("BCE loss (nodulekit.losses missing)")
        keras.mixed_precision.set_global_policy("float32")
        self.precision = "float32"
        self.model = build_reference(self.architecture, (SIZE, SIZE, 1), filters=FILTERS)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["binary_accuracy"])
        self.x = self.train_images[..., None]
        self.y = self.train_masks[..., None].astype(np.float32)
        self.xi = self.infer_images[..., None]
        self._train = lambda repeat: self.model.fit(self.x, self.y, batch_size=TRAIN_BATCH, epochs=1, shuffle=True, verbose=0)
        self._infer = lambda repeat: self.model.predict(self.xi, batch_size=INFER_BATCH, verbose=0)

    def _setup_nodulekit(self, *, proposed: bool, float32: bool = False) -> None:
        import keras

        from nodulekit.losses import get_loss
        from nodulekit.models import build_model
        from nodulekit.training.config import TrainConfig

        config = TrainConfig()
        if proposed and PROPOSED["mixed_precision"] is not None:
            config = config.replace(mixed_precision=PROPOSED["mixed_precision"])
        if float32:  # the default build at MONAI's default precision: the like-for-like float32 pair
            config = config.replace(mixed_precision="float32")
        self.precision = _resolve_precision(config.mixed_precision)
        if self.tensorflow and config.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()  # what run_protocol does (set_seed(deterministic_ops=...))
        keras.mixed_precision.set_global_policy(self.precision)
        try:
            model_options = dict(config.model_options)
            if proposed and PROPOSED["model"]:
                from variants import build_variant

                self.model = build_variant(self.architecture, (SIZE, SIZE, 1), filters=config.filters, **PROPOSED["model"])
            else:
                self.model = build_model(self.architecture, (SIZE, SIZE, 1), filters=config.filters, **model_options)
            metrics: list[Any] = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=config.threshold)]
            try:
                from nodulekit.metrics import DiceCoefficient

                metrics.append(DiceCoefficient(name="dice"))
            except ImportError:
                self.notes.append("no Dice metric (nodulekit.metrics missing)")
            self.model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                loss=get_loss(config.loss, **config.loss_options),
                metrics=metrics,
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")  # the model keeps the policy it was built with

        augmentation = config.augmentation if config.augment else False
        if self.tensorflow:
            if proposed and PROPOSED["batched_augmentation"]:
                from variants import make_dataset_batched as make
            else:
                from nodulekit.training.data import make_dataset as make

            callbacks = [keras.callbacks.TerminateOnNaN()]

            def train(repeat: int):
                dataset = make(
                    self.train_images, self.train_masks, batch_size=TRAIN_BATCH, shuffle=True,
                    augment=augmentation, seed=self.seed, epoch=repeat,
                )
                return self.model.fit(dataset, epochs=1, verbose=0, callbacks=callbacks)

            self._train = train
        else:
            self.notes.append(f"NumPy input ({_backend()} backend: no tf.data, no augmentation)")
            x, y = self.train_images[..., None], self.train_masks[..., None].astype(np.float32)
            self._train = lambda repeat: self.model.fit(x, y, batch_size=TRAIN_BATCH, epochs=1, shuffle=True, verbose=0)

        try:
            if not self.tensorflow:
                raise ImportError("Segmenter needs TensorFlow")
            from nodulekit.inference import Segmenter

            segmenter = Segmenter(self.model, None, window=SIZE, units="float", mode="sliding")
            self._infer = lambda repeat: segmenter.predict(self.infer_images, mode="sliding", batch_size=INFER_BATCH, progress=False)
        except ImportError as exc:
            self.notes.append(f"model.predict ({exc})")
            xi = self.infer_images[..., None]
            self._infer = lambda repeat: self.model.predict(xi, batch_size=INFER_BATCH, verbose=0)

    # -- timed work ----------------------------------------------------------------------------
    def train(self, repeat: int) -> int:
        history = self._train(repeat)
        losses = history.history.get("loss", [np.nan])
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"training loss is {losses[-1]}")
        return self.n_train

    def infer(self, repeat: int) -> int:
        out = self._infer(repeat)
        np.asarray(out).sum()  # results are on the host
        return self.n_infer

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "backend": _backend(), "parameters": int(self.model.count_params()), "notes": self.notes}


# --------------------------------------------------------------------------------------------------
# MONAI row


class MonaiBench:
    """MONAI AttentionUnet / UNet in PyTorch with a plain, fair training and inference loop."""

    def __init__(self, architecture: str, *, train_steps: int, infer_batches: int, seed: int = 0, autocast: str | None = None):
        import torch
        from monai.losses import TverskyLoss
        from monai.networks.nets import AttentionUnet, BasicUNet

        self.torch = torch
        self.notes: list[str] = []
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(int(os.environ.get("NODULEKIT_BENCH_THREADS", 0)) or os.cpu_count() or 1)
        if os.environ.get("OMP_WAIT_POLICY"):
            self.notes.append(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        torch.manual_seed(seed)
        if architecture == "attention_unet":
            model = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=1, channels=FILTERS, strides=(2, 2, 2, 2))
        else:  # MONAI's two-convolutions-per-level U-Net (its UNet is a lighter one-convolution design)
            model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(*FILTERS, FILTERS[0]))
        self.model = model.to(self.device)
        # MONAI's alpha weights false positives: alpha=0.3, beta=0.7 is nodulekit's fn_weight=0.7.
        self.loss = TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        images, masks = synthetic_crops(train_steps * TRAIN_BATCH, seed=seed)
        self.x = torch.from_numpy(images[:, None]).to(self.device)
        self.y = torch.from_numpy(masks[:, None].astype(np.float32)).to(self.device)
        self.xi = torch.from_numpy(synthetic_crops(infer_batches * INFER_BATCH, seed=seed + 1)[0][:, None])
        self.n_train, self.n_infer = len(self.x), len(self.xi)
        self.generator = torch.Generator().manual_seed(seed)
        self.autocast = autocast
        self.precision = "float32" if autocast is None else f"autocast {autocast}"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _autocast(self):
        import contextlib

        if self.autocast is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=getattr(self.torch, self.autocast))

    def train(self, repeat: int) -> int:
        torch = self.torch
        self.model.train()
        order = torch.randperm(self.n_train, generator=self.generator).to(self.device)
        for start in range(0, self.n_train, TRAIN_BATCH):
            index = order[start : start + TRAIN_BATCH]
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss(self.model(self.x[index]), self.y[index])
            loss.backward()
            self.optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)}")
        self._sync()
        return self.n_train

    def infer(self, repeat: int) -> int:
        torch = self.torch
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            for start in range(0, self.n_infer, INFER_BATCH):
                out = torch.sigmoid(self.model(self.xi[start : start + INFER_BATCH].to(self.device)))
                out.float().cpu().numpy()
        self._sync()
        return self.n_infer

    def describe(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "backend": f"torch {self.torch.__version__} ({self.device.type}, {self.torch.get_num_threads()} threads)",
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "notes": self.notes,
        }


def set_threads(threads: int, *, torch: bool) -> None:
    """Limit TensorFlow (intra- and inter-op pools) or PyTorch (intra- and inter-op) to ``threads`` threads."""
    if torch:
        import torch as _torch

        _torch.set_num_threads(threads)
        _torch.set_num_interop_threads(threads)
        os.environ["NODULEKIT_BENCH_THREADS"] = str(threads)
    elif _backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def make_bench(implementation: str, architecture: str, *, train_steps: int, infer_batches: int, seed: int = 0):
    """The bench object of one row (raises ImportError when its library or nodulekit module is missing)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if implementation == "monai":
        return MonaiBench(architecture, train_steps=train_steps, infer_batches=infer_batches, seed=seed)
    if implementation == "monai_autocast":
        return MonaiBench(
            architecture, train_steps=train_steps, infer_batches=infer_batches, seed=seed,
            autocast="float16" if _torch_cuda() else "bfloat16",
        )
    return KerasBench(implementation, architecture, train_steps=train_steps, infer_batches=infer_batches, seed=seed)


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------
# Worker loop


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(_REPLY + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _timed(function, repeat: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    images = function(repeat)
    return {"images": images, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python throughput.py --implementation X --architecture Y``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--implementation", required=True, choices=(*IMPLEMENTATIONS, "monai_autocast"))
    parser.add_argument("--architecture", required=True, choices=ARCHITECTURES)
    parser.add_argument("--train-steps", type=int, default=32)
    parser.add_argument("--infer-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="threads per library (0: its default, the core count)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.threads:
        set_threads(args.threads, torch=args.implementation.startswith("monai"))
    start = time.perf_counter()
    try:
        bench = make_bench(args.implementation, args.architecture, train_steps=args.train_steps, infer_batches=args.infer_batches, seed=args.seed)
        bench.train(0)  # warm-up: tracing, primitive creation, allocator; never timed
        bench.infer(0)
    except ImportError as exc:
        _reply({"error": f"n/a (module missing: {exc.name or exc})"})
        return 0
    except Exception as exc:  # noqa: BLE001 - reported as the row's result
        _reply({"error": f"failed: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)})
        return 0
    _reply({"ready": True, "setup_seconds": time.perf_counter() - start, **bench.describe()})
    repeat = 0
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "train":
                repeat += 1
                _reply(_timed(bench.train, repeat))
            elif command == "infer":
                _reply(_timed(bench.infer, repeat))
            elif command == "quit":
                break
            else:
                _reply({"error": f"unknown command {command!r}"})
        except Exception as exc:  # noqa: BLE001
            _reply({"error": f"failed: {type(exc).__name__}: {exc}"})
    _reply({"peak_rss_mb": _peak_rss_mb()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
