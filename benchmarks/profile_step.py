"""Where a training step's time goes: TensorFlow profiler over one epoch, summed per op type and per op.

Usage::

    .venv/bin/python benchmarks/profile_step.py                       # attention_unet, nodulekit default precision
    .venv/bin/python benchmarks/profile_step.py --precision mixed_bfloat16 --architecture unet --augment

Each op's time is the sum of its fastest occurrences, one step's worth (``occurrences // steps``),
so that a preemption by another process on a shared machine does not land on one op; the
step itself (``__inference_multi_step_on_iterator``) is reported the same way. Needs only
TensorFlow (the profiler's XPlane protobuf ships with it).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def profile(architecture: str, precision: str | None, *, steps: int, augment: bool, batched: bool) -> tuple[dict, dict, float]:
    """Profile one epoch of ``steps`` training steps; returns (per op type ms, per op ms, step ms)."""
    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from nodulekit.losses import get_loss
    from nodulekit.models import build_model
    from nodulekit.training.data import make_dataset
    from nodulekit.training.distributed import precision_policy
    from throughput import synthetic_crops
    from variants import make_dataset_batched

    images, masks = synthetic_crops(steps * 16)
    with precision_policy(precision):
        model = build_model(architecture, (64, 64, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("focal_tversky"))
    make = make_dataset_batched if batched else make_dataset

    def epoch(number):
        model.fit(make(images, masks, batch_size=16, shuffle=True, augment=augment, epoch=number), epochs=1, verbose=0)

    epoch(0)
    folder = tempfile.mkdtemp(prefix="nodulekit-profile-")
    tf.profiler.experimental.start(folder)
    epoch(1)
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(folder + "/**/*.xplane.pb", recursive=True))[-1]
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    durations = collections.defaultdict(list)
    for plane in space.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith("$"):
                    durations[name].append(event.duration_ps / 1e9)
    by_op, by_type, step = {}, collections.Counter(), 0.0
    for name, values in durations.items():
        per_step = max(1, len(values) // steps)
        fastest = sum(sorted(values)[:per_step])
        if "multi_step_on_iterator" in name:
            step = max(step, fastest)
            continue
        kind = name.rsplit(":", 1)[1].strip()
        if kind in ("Process", "Run") or name.startswith("EagerLocalExecute") or "Dataset" in kind or "Iterator" in name:
            continue
        by_op[name] = fastest
        by_type[kind] += fastest
    return dict(by_type), by_op, step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="attention_unet", choices=("unet", "attention_unet"))
    parser.add_argument("--precision", default=None, help="None/float32, mixed_bfloat16, auto (default: TrainConfig's)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--batched-augmentation", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    precision = args.precision
    if precision is None:
        from nodulekit.training import TrainConfig

        precision = TrainConfig().mixed_precision
    by_type, by_op, step = profile(args.architecture, precision, steps=args.steps, augment=args.augment, batched=args.batched_augmentation)
    total = sum(by_type.values())
    print(f"{args.architecture}, precision {precision}: one step {step:.1f} ms (fastest), ops {total:.1f} ms summed over threads")
    for kind, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:8.2f} ms {100 * ms / total:5.1f}%  {kind}")
    print("top ops:")
    for name, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:8.2f} ms  {name.replace('StatefulPartitionedCall/', '')[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
