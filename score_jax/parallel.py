"""Data-parallel training: meshes, shardings, pmap and the agreement between hosts live here.

The steps and samplers below know nothing about devices, and the pipeline above asks only which host it runs on
(``jax.process_index()``, so that one host writes the files); every mapping onto devices is made here.

Two ways to run the pure step of :mod:`score_jax.train` on several devices (``training.parallel``):

- ``'jit'`` (default): ``jax.jit`` over a one-axis :class:`jax.sharding.Mesh`. The train state is replicated
  and each step's batch is sharded on its batch axis (``NamedSharding``); the step is written for the global
  batch and XLA inserts the gradient all-reduce. Spans hosts after :func:`initialize_distributed`.
- ``'pmap'``: ``jax.pmap`` over the local devices, as the original does. The state carries a leading device
  axis (:func:`replicate`) and the step must be built with ``axis_name=AXIS_NAME`` so that it averages its
  gradients with ``lax.pmean``.

Both take the stacked global batch ``[n_jitted_steps, B, ...]`` and give the same parameters as one device
on the same batch (the step draws each example's randomness from its global index, see
:mod:`score_jax.train`). ``B`` must be divisible by the number of devices.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS_NAME", "MODES", "make_mesh", "batch_and_replicated_shardings", "agree_on_stop", "check_batch_size",
    "replicate", "unreplicate", "shard_batch",
    "make_parallel_train_step", "initialize_distributed",
]

AXIS_NAME = "batch"  # the data-parallel axis of the mesh and of pmap
MODES = ("jit", "pmap")
_BATCH_AXIS = 1  # the batch axis of a stacked batch [n_jitted_steps, B, ...]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named :data:`AXIS_NAME` over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device.")
  return Mesh(np.asarray(devices), (AXIS_NAME,))


def batch_and_replicated_shardings(mesh: Mesh | None = None) -> tuple[NamedSharding, NamedSharding]:
  """Output shardings ``(rows over the mesh, replicated)`` of a sampler's ``(samples [B, ...], nfe)``."""
  mesh = make_mesh() if mesh is None else mesh
  return NamedSharding(mesh, PartitionSpec(AXIS_NAME)), NamedSharding(mesh, PartitionSpec())


def agree_on_stop(stop: bool) -> bool:
  """Whether any host was asked to stop (SIGTERM), agreed by all hosts so that they save and stop together.

  One host: ``stop`` itself. Several: an all-gather of every host's flag (a collective: call it on every host
  at the same point of the loop).
  """
  if jax.process_count() == 1:
    return bool(stop)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(stop, np.int32))))


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown parallel mode {mode!r}; expected one of {list(MODES)} (training.parallel).")


def check_batch_size(batch_size: int, n_devices: int, what: str = "batch size") -> None:
  """ValueError unless ``batch_size`` splits evenly over ``n_devices``."""
  if batch_size % n_devices:
    raise ValueError(f"{what} {batch_size} is not divisible by the number of devices {n_devices}; use a multiple "
                     f"of {n_devices}.")


def replicate(tree, mode: str = "jit", mesh: Mesh | None = None):
  """``tree`` (e.g. the train state) on every device: replicated over ``mesh`` ('jit'), or stacked on a leading
  axis of the local devices ('pmap')."""
  _check_mode(mode)
  if mode == "pmap":
    devices = jax.local_devices()
    per_device = NamedSharding(Mesh(np.asarray(devices), (AXIS_NAME,)), PartitionSpec(AXIS_NAME))
    stacked = jax.tree_util.tree_map(lambda a: np.broadcast_to(np.asarray(a), (len(devices),) + np.shape(a)), tree)
    return jax.device_put(stacked, per_device)  # [local devices, ...], slice i on device i
  mesh = make_mesh() if mesh is None else mesh
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def unreplicate(tree, mode: str = "jit"):
  """The single copy of a :func:`replicate`-d tree (the first device's for 'pmap')."""
  _check_mode(mode)
  if mode == "pmap":
    return jax.tree_util.tree_map(lambda a: a[0], tree)
  return tree


def shard_batch(xs, mode: str = "jit", mesh: Mesh | None = None, axis: int = _BATCH_AXIS):
  """Split this host's batch over the devices along ``axis`` (default: the ``B`` of ``[n, B, ...]``).

  'jit': a global ``jax.Array`` sharded over ``mesh`` (from the process-local rows on several hosts).
  'pmap': the array reshaped to ``[local devices, ..., B / local devices, ...]``.

  Raises:
    ValueError: if ``xs.shape[axis]`` is not divisible by the number of (local) devices.
  """
  _check_mode(mode)
  if mode == "pmap":
    n = jax.local_device_count()
    check_batch_size(xs.shape[axis], n)
    shape = xs.shape[:axis] + (n, xs.shape[axis] // n) + xs.shape[axis + 1:]
    return np.moveaxis(np.asarray(xs).reshape(shape), axis, 0)  # pmap puts slice i on local device i
  mesh = make_mesh() if mesh is None else mesh
  n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  check_batch_size(xs.shape[axis], n_local)
  sharding = NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS_NAME))
  if jax.process_count() > 1:
    return jax.make_array_from_process_local_data(sharding, np.asarray(xs))
  return jax.device_put(xs, sharding)


def make_parallel_train_step(config: ml_collections.ConfigDict, step_fn: Callable, mode: str | None = None, *,
                             mesh: Mesh | None = None, donate: bool = True,
                             unroll: bool | int | None = None) -> Callable:
  """``step_fn`` fused over ``n`` steps and run data-parallel: ``pstep(state, xs [n, B, ...], key)``.

  Args:
    config: gives ``training.batch_size`` (checked against the device count here, before any work) and the
      default ``mode``, ``training.parallel`` ('jit' if absent).
    step_fn: a single step :func:`score_jax.train.make_train_step`, built with ``axis_name=None`` for 'jit'
      and ``axis_name=AXIS_NAME`` for 'pmap'.
    mode: 'jit' or 'pmap'.
    mesh: the devices for 'jit' (default :func:`make_mesh`); 'pmap' uses the local devices.
    donate: let XLA reuse the input state's memory (do not use that state after the call).
    unroll: the fused steps' ``lax.scan`` unrolling (:func:`score_jax.train.make_fused_train_step`; default:
      unrolled on the CPU backend, rolled elsewhere).

  Returns:
    ``pstep(state, xs, key) -> (state, metrics)``; its attribute ``compiled_fn`` is the ``jax.jit`` /
    ``jax.pmap`` function it calls after laying out the batch (``.lower(...)`` it to inspect the compiled step,
    as ``scripts/bench_memory.py`` does). ``state`` laid out by :func:`replicate` for ``mode``; ``xs``
    this host's stacked batch ``[n, B, ...]`` or a pytree of them, e.g. (images, labels) (for 'jit' also the
    output of :func:`shard_batch`); ``metrics`` a dict of ``[n]`` arrays. Raises ValueError, before running, if
    ``B`` is not divisible by the devices.
  """
  from score_jax import train  # the fused scan; train never imports this module

  mode = config.training.get("parallel", "jit") if mode is None else mode
  _check_mode(mode)
  axis_name = getattr(step_fn, "axis_name", None)
  expected = AXIS_NAME if mode == "pmap" else None
  if axis_name != expected:
    raise ValueError(f"mode {mode!r} needs a step built with axis_name={expected!r}, got axis_name={axis_name!r} "
                     "(score_jax.train.make_train_step(..., axis_name=...)).")
  n_devices = jax.device_count() if mode == "pmap" else (make_mesh() if mesh is None else mesh).size
  check_batch_size(config.training.batch_size, n_devices, "training.batch_size")
  n_micro = train.grad_accum_steps(config)
  if n_micro > 1 and (config.training.batch_size // n_devices) % n_micro:
    raise ValueError(f"training.batch_size {config.training.batch_size} over {n_devices} device(s) gives "
                     f"{config.training.batch_size // n_devices} rows per device, which do not split into "
                     f"training.grad_accum_steps={n_micro} micro-batches; use a multiple of {n_devices * n_micro}.")
  fused = train.make_fused_train_step(step_fn, unroll=unroll)
  donate_argnums = (0,) if donate else ()

  if mode == "pmap":
    p_fused = jax.pmap(fused, axis_name=AXIS_NAME, in_axes=(0, 0, None), donate_argnums=donate_argnums)

    def pstep(state, xs, key):
      state, metrics = p_fused(state, jax.tree_util.tree_map(lambda a: shard_batch(a, "pmap"), xs), key)
      return state, unreplicate(metrics, "pmap")  # pmean'd: the same on every device

    pstep.compiled_fn = p_fused
    return pstep

  mesh = make_mesh() if mesh is None else mesh
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(None, AXIS_NAME))
  j_fused = jax.jit(fused, in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=donate_argnums)

  def jstep(state, xs, key):
    def place(a):  # each leaf of the batch (images, and labels for a classifier)
      return a if isinstance(a, jax.Array) and a.sharding == batch_sharding else shard_batch(a, "jit", mesh)

    return j_fused(state, jax.tree_util.tree_map(place, xs), key)

  jstep.compiled_fn = j_fused
  return jstep


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> None:
  """Connect the processes of a multi-host run (``jax.distributed.initialize``); call it before any other JAX call.

  Every host runs the same command; each process then feeds its own share of the global batch
  (``B / jax.process_count()`` rows, those of rank ``jax.process_index()``) and :func:`shard_batch` assembles
  the global array. Missing arguments come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` when set, else from the cluster (TPU pods, SLURM, Open MPI are detected by JAX).

  TPU pod slice (everything is detected; run on all workers at once)::

      gcloud compute tpus tpu-vm ssh my-pod --zone us-central2-b --worker=all --command \\
        "cd score_jax && python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py \\
         --workdir gs://my-bucket/runs/ve_cifar10"

  Multi-node GPUs without a scheduler (here 2 nodes; node0 listens on port 1234)::

      # on node0:
      JAX_COORDINATOR_ADDRESS=node0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m score_jax.main ...
      # on node1:
      JAX_COORDINATOR_ADDRESS=node0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python -m score_jax.main ...

  Under SLURM, ``srun --nodes=2 --ntasks-per-node=1 python -m score_jax.main ...`` needs no variables.
  A single process (no variables, no cluster) returns without doing anything.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if jax.distributed.is_initialized():
    return
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids)
  except ValueError:
    if coordinator_address is None and num_processes is None:  # no cluster detected: a single process
      return
    raise
