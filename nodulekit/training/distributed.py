"""Scaling out on existing engines: ``tf.distribute`` strategies, mixed precision, and KerasTuner for
spreading the grid trials over machines.

Two kinds of parallelism, each left to an established engine:

* **One model on several devices or machines** — ``tf.distribute``. Pass a strategy to
  :func:`nodulekit.training.run_protocol`; every unit builds its model, optimizer and ``compile``
  inside ``strategy.scope()`` and Keras splits each (global) batch over the replicas.
  ``MirroredStrategy`` for several GPUs of one machine, ``MultiWorkerMirroredStrategy`` across
  machines (each runs the same command with its own ``TF_CONFIG``), ``TPUStrategy`` on Colab TPUs.
  Under a multi-worker strategy the chief (task 0 of ``chief``/``worker``) writes the run folder;
  the other workers read it to skip and resume exactly as the chief does (so ``run_dir`` must be on
  a file system they all see, as for any multi-worker Keras checkpointing) and write their
  identical copies into a scratch folder that is deleted at the end.
* **Independent grid trials on several machines** — KerasTuner's distributed mode
  (:func:`nodulekit.training.protocol.tune_grid_distributed`). The chief process runs KerasTuner's oracle (a gRPC server);
  each worker asks it for the next (architecture, learning rate, batch size) of a
  :class:`keras_tuner.oracles.GridSearchOracle` and trains it as an ordinary nodulekit unit
  into the shared run folder, reporting the validation Dice back. Why KerasTuner: it is the
  Keras team's own tuner, already speaks Keras, needs only ``pip install keras-tuner`` (gRPC comes
  with TensorFlow), has exactly the chief/worker model the grid needs (configured by three
  environment variables ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
  ``KERASTUNER_ORACLE_PORT``) and a grid oracle that hands out every combination once; failed
  (diverged) trials are reported as such. Ray Tune or Dask would do as well but bring a cluster
  runtime of their own for 18 trials. Because KerasTuner only hands out trials, every result lives
  in nodulekit's resumable unit folders, and running :func:`~nodulekit.training.run_protocol` on
  the chief afterwards finds the grid finished and goes on to the cross-validation.
"""

from __future__ import annotations

import json
import logging
import os
import types

from ..errors import InvalidParameterError
from ..precision import cpu_supports_bfloat16, precision_policy, resolve_precision  # noqa: F401  (their old home)

__all__ = [
    "make_strategy",
    "worker_role",
    "prepare_model_for_strategy",
]

logger = logging.getLogger(__name__)


def make_strategy(name: str | None):
    """A ``tf.distribute`` strategy by name, for command lines.

    Parameters
    ----------
    name : {None, "none", "mirrored", "multi_worker", "tpu"}
        ``"mirrored"``: all local GPUs (or the CPU); ``"multi_worker"``: the cluster described by
        the ``TF_CONFIG`` environment variable; ``"tpu"``: the TPU of a Colab/Cloud runtime.

    Returns
    -------
    tf.distribute.Strategy or None
    """
    if name in (None, "", "none"):
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise InvalidParameterError("strategy 'multi_worker' needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise InvalidParameterError(f"strategy must be one of None, 'mirrored', 'multi_worker', 'tpu', got {name!r}")


def worker_role(strategy=None) -> tuple[bool, int]:
    """``(is_chief, task_index)`` of this process in a multi-worker strategy (``(True, 0)`` otherwise).

    The chief is task 0 of type ``"worker"`` when the cluster has no ``"chief"`` task, as in
    Keras's own multi-worker checkpointing.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if task_type is None:
        config = json.loads(os.environ.get("TF_CONFIG", "{}")) if strategy is not None else {}
        task = config.get("task", {})
        task_type, task_id = task.get("type"), task.get("index")
    if task_type is None:
        return True, 0
    task_id = int(task_id or 0)
    cluster = getattr(resolver, "cluster_spec", lambda: None)()
    has_chief = cluster is not None and "chief" in cluster.as_dict()
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief):
        return True, task_id
    return False, task_id


def prepare_model_for_strategy(model, strategy) -> None:
    """Make a compiled model trainable with one ``model.fit`` call under ``strategy``.

    Under any strategy, Keras 3 (up to at least 3.15) builds the model symbolically from a first
    batch that it takes from ``fit``'s own data iterator. With ``steps_per_epoch`` (the one ``fit``
    over chained epochs of :func:`nodulekit.training.callbacks.fit_model`) that iterator lives on
    across the epochs, so the taken batch would be missing from training and shift every epoch by
    one batch. Here the first batch comes from a fresh iterator of the same dataset instead (only
    its shapes matter), and the model is built from this worker's part of it.

    A ``MultiWorkerMirroredStrategy`` spanning several workers needs more (keras-team/keras#20585,
    tensorflow/tensorflow#72388): Keras reduces that first (nested) batch with an eager
    cross-worker ``reduce`` that fails, which the local batch above avoids, and its step functions
    reduce scalar logs with ``axis=0``; these are averaged over the workers with ``axis=None``,
    which is what single-machine strategies get. The patches are skipped, with a warning, if
    Keras's internals change.
    """
    import tensorflow as tf

    if strategy is None:
        return
    try:
        from keras import tree
        from keras.src.backend.tensorflow import trainer as tf_trainer

        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and tf_trainer._collective_all_reduce_multi_worker(strategy):
            _patch_reduce_per_replica(tf_trainer, tree)
    except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on the Keras version
        logger.warning("distributed fit workaround not applied (%s); Keras may have fixed fit() itself", exc)
        return

    def local_values(value):
        return strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            data_batch = tree.map_structure(local_values, next(iter(iterator._get_iterator())))
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(symbolic_build, model)


def _patch_reduce_per_replica(tf_trainer, tree) -> None:
    """Average scalar logs over workers with ``axis=None`` (see :func:`prepare_model_for_strategy`)."""
    import tensorflow as tf

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_nodulekit_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(strategy):
            return original(values, strategy, reduction)

        def reduce_one(value):
            local = strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tree.map_structure(reduce_one, values)

    reduce_per_replica._nodulekit_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica
