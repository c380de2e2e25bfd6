"""Training checkpoints: periodic snapshots, a preemption checkpoint, safe resume, and SIGTERM handling.

A checkpoint holds the training state pytree ``{params, ema_params, opt_state, step}`` and a small JSON
record (``meta``): the config sections that fix the parameter tree (``model``, ``data``), the parameter
shapes and dtypes, their fingerprint, the seed, the data position (the step: batches are drawn from
``fold_in(key, step)``) and a sha256 of each state entry's arrays (:func:`state_digests`), verified when that
entry is restored: a checkpoint damaged in place (bytes flipped, same size) is a corrupt checkpoint.
Checkpoints live in ``WORKDIR/checkpoints/<step>/`` and are written by an orbax
``CheckpointManager``, which writes into a temporary directory and renames it when complete; every save is
awaited (``wait_until_finished``) before older checkpoints are deleted, so a kill at any moment leaves the
previous checkpoint intact.

Kept checkpoints: every ``training.snapshot_freq`` steps a periodic snapshot (the newest
``training.keep_snapshots`` are kept; all of them when it is unset, as score_sde does), and every
``training.snapshot_freq_for_preemption`` steps a preemption checkpoint that replaces the previous one.
A step that is a multiple of ``snapshot_freq`` is a periodic snapshot whatever triggered the save.

Any checkpoint reads back with orbax alone, without score_jax (orbax logs that it restores the items
without a handler registry; the arrays are exact, the optax states come back as lists and dicts)::

  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager("WORKDIR/checkpoints")
  ckpt = mngr.restore(mngr.latest_step())  # ckpt.state["ema_params"], ckpt.meta["seed"], ...

or one item of one step: ``ocp.StandardCheckpointer().restore("WORKDIR/checkpoints/STEP/state")``.

Use in a training loop::

  ckpts = Checkpointer.from_config(config, workdir, template=init_state(...))
  state = ckpts.restore_latest() or fresh_state      # skips corrupt checkpoints, refuses other configs
  install_sigterm_handler()
  while int(state["step"]) < n_iters:
    state = train_chunk(state)
    step, stop = int(state["step"]), should_stop()   # read the flag once per step
    ckpts.save(state, step, force=stop or step == n_iters)  # writes only when due, or forced
    if stop:
      break                                          # exit 0: the scheduler resubmits, we resume

Save frequencies should be multiples of the steps fused per jitted call, or the saves never fall due.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil
import signal
import sys
import threading
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from score_jax.errors import UserError

__all__ = [
    "Checkpointer", "CheckpointCorruptError", "install_sigterm_handler", "should_stop", "request_stop",
    "state_digests", "CheckpointWriteError",
]

log = logging.getLogger(__name__)


# Checkpoint directories whose restore failed in this process (see _quiet_abandoned_reads).
_FAILED_RESTORES: set[str] = set()


class _AbandonedReadErrors(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" records that name a checkpoint whose restore failed."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("exception was never retrieved" in message and any(p in message for p in _FAILED_RESTORES))


def _without_closed_loop_errors(previous):
  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.score_jax_abandoned_reads = True
  return hook


def _quiet_abandoned_reads(path) -> None:
  """Silence the aftermath of a failed restore of ``path``, which is reported once, as a CheckpointCorruptError.

  When one array file is unreadable, orbax raises the first read's error and closes its event loop while the
  reads of the other arrays are still in flight. As they finish, tensorstore calls back into the closed loop
  (an unraisable ``RuntimeError: Event loop is closed`` each) and asyncio logs every failed one with its full
  traceback when it is garbage-collected: pages of tracebacks, long after ``--mode eval`` or a resume handled
  the corrupt checkpoint. From the first failed restore on, the asyncio records naming a failed checkpoint and
  the unraisable "Event loop is closed" errors are dropped, and the warning of orbax's metadata-read
  coroutine that never ran; every other error is still reported.
  """
  _FAILED_RESTORES.add(str(path))
  asyncio_log = logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedReadErrors) for f in asyncio_log.filters):
    asyncio_log.addFilter(_AbandonedReadErrors())
  if not getattr(sys.unraisablehook, "score_jax_abandoned_reads", False):
    sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)
  # and the abandoned reads' coroutines that never ran (orbax's array-metadata reads)
  warnings.filterwarnings("ignore", message=r"coroutine '[\w.]*_get_array_metadatas' was never awaited",
                          category=RuntimeWarning)

SUBDIR = "checkpoints"
STATE_ITEM = "state"
META_ITEM = "meta"
# Config sections whose values fix the parameter tree and the data stream; a resume under other values is refused.
FINGERPRINT_SECTIONS = ("model", "data", "classifier")  # a section a config lacks is skipped
_COMMIT_MARKER = "commit_success.txt"  # written by orbax before the temporary directory is renamed
_STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's per-step JSON; gets commit_timestamp_nsecs at finalisation
_MAX_LISTED = 5  # mismatches named in an error message


# What orbax says when the saved tree differs from the template's (two wordings, by where it is noticed).
_TREE_MISMATCH = ("Structure mismatch", "tree structures do not match")


class CheckpointCorruptError(RuntimeError, UserError):
  """A checkpoint directory that is partial, truncated or unreadable, or whose arrays differ from their digests."""


class CheckpointWriteError(OSError, UserError):
  """A save that failed (a full disk): its partial files are removed, the checkpoints before it kept."""


# ---- the record stored beside the arrays --------------------------------------------------------------


def _leaf_paths(tree) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def param_signature(params) -> dict[str, str]:
  """``{'Dense_0/kernel': 'float32[2, 64]', ...}`` of a parameter tree (concrete or abstract arrays)."""
  return {k: f"{np.dtype(v.dtype).name}{list(np.shape(v))}" for k, v in _leaf_paths(params).items()}


def state_digests(state: Mapping) -> dict[str, str]:
  """sha256 of each entry of a state (``{'params': hex, 'ema_params': hex, ...}``), over every leaf's dtype, shape
  and bytes in tree order: recorded at save, checked for the entries a restore reads (so a partial restore
  hashes only what it reads)."""
  out = {}
  for name in sorted(state):
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state[name]):
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(f"{a.dtype.str}{a.shape}".encode())
      h.update(a.reshape(-1).view(np.uint8))  # the bytes without a copy (any dtype, bfloat16 included)
    out[name] = h.hexdigest()
  return out


def _jsonable(x):
  return json.loads(json.dumps(x, sort_keys=True, default=repr))


def fingerprint(config_sections: Mapping, params_signature: Mapping) -> str:
  """SHA-256 of the config sections and the parameter signature (canonical JSON)."""
  blob = json.dumps(_jsonable({"config": config_sections, "params": params_signature}), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def _flatten_dict(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten_dict(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _differences(found: Mapping, expected: Mapping, what: str) -> list[str]:
  found, expected = _flatten_dict(_jsonable(dict(found))), _flatten_dict(_jsonable(dict(expected)))
  out = []
  for k in sorted(set(found) | set(expected)):
    if k not in found:
      out.append(f"{what}{k}: absent from the checkpoint, {expected[k]!r} now")
    elif k not in expected:
      out.append(f"{what}{k}: {found[k]!r} in the checkpoint, absent now")
    elif found[k] != expected[k]:
      out.append(f"{what}{k}: {found[k]!r} in the checkpoint, {expected[k]!r} now")
  return out


# ---- SIGTERM: ask the loop to save and stop --------------------------------------------------------------

_STOP = threading.Event()


def install_sigterm_handler() -> Any:
  """Make SIGTERM set the flag read by :func:`should_stop` instead of killing the process.

  Call it from the main thread. The loop then saves a checkpoint (``force=True``) and exits normally.
  With several hosts, agree on the flag before saving (e.g. ``multihost_utils.process_allgather``).

  Returns:
    The previous SIGTERM handler.
  """

  def handler(signum, frame):
    del frame
    log.warning("received signal %d: saving a checkpoint and stopping at the end of this step", signum)
    _STOP.set()

  return signal.signal(signal.SIGTERM, handler)


def should_stop() -> bool:
  """Whether SIGTERM (or :func:`request_stop`) asked the training loop to save and stop."""
  return _STOP.is_set()


def request_stop(stop: bool = True) -> None:
  """Set (or clear) the stop flag by hand: tests, or a loop stopping for reasons of its own."""
  if stop:
    _STOP.set()
  else:
    _STOP.clear()


# ---- the checkpointer ------------------------------------------------------------------------------------


class Checkpointer:
  """Periodic and preemption checkpoints of a training state in ``workdir/checkpoints/``.

  Args:
    workdir: the run's directory; checkpoints go to ``workdir/checkpoints/<step>/``.
    template: a state ``{params, ema_params, opt_state, step}`` of the current config (concrete arrays or
      ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``): it gives the tree, shapes and dtypes restored.
    snapshot_freq: steps between periodic snapshots; ``None`` or 0 for none.
    preemption_freq: steps between preemption checkpoints (each replaces the previous); ``None`` or 0 for none.
    keep_snapshots: how many periodic snapshots to keep (the newest); ``None`` keeps all.
    config_sections: JSON-able config sections (``{'model': {...}, 'data': {...}}``) that a resumed run
      must share with the checkpoint.
    seed: the run's seed; a resume under another seed is refused.
  """

  def __init__(self, workdir, template, *, snapshot_freq: int | None, preemption_freq: int | None,
               keep_snapshots: int | None = None, config_sections: Mapping | None = None, seed: int | None = None):
    for name, value in (("snapshot_freq", snapshot_freq), ("preemption_freq", preemption_freq)):
      if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    if keep_snapshots is not None and (not isinstance(keep_snapshots, (int, np.integer)) or keep_snapshots < 1):
      raise ValueError(f"keep_snapshots must be a positive int or None (keep all), got {keep_snapshots!r}")
    missing = {"params", "ema_params", "opt_state", "step"} - set(template)
    if missing:
      raise ValueError(f"the state template lacks {sorted(missing)}; expected {{params, ema_params, opt_state, step}}")
    self.directory = pathlib.Path(workdir).absolute() / SUBDIR
    self.snapshot_freq = int(snapshot_freq or 0)
    self.preemption_freq = int(preemption_freq or 0)
    self.keep_snapshots = keep_snapshots
    self._abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    self._signature = param_signature(self._abstract["params"])
    self._config = _jsonable(dict(config_sections or {}))
    self.seed = seed
    self.fingerprint = fingerprint(self._config, self._signature)
    self._checked_existing = False
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True, cleanup_tmp_directories=True),
        item_names=(STATE_ITEM, META_ITEM))

  @classmethod
  def from_config(cls, config, workdir, template) -> "Checkpointer":
    """A checkpointer set by ``config.training`` (snapshot frequencies, ``keep_snapshots``: 0 or None keeps all)
    and ``config.seed``."""
    t = config.training
    sections = {s: config[s].to_dict() for s in FINGERPRINT_SECTIONS if s in config}
    return cls(workdir, template, snapshot_freq=t.get("snapshot_freq", None),
               preemption_freq=t.get("snapshot_freq_for_preemption", None),
               keep_snapshots=t.get("keep_snapshots", None) or None, config_sections=sections,
               seed=config.get("seed", None))

  # -- listing --

  def all_steps(self) -> list[int]:
    """Steps of the checkpoint directories present, ascending (as orbax lists them: not validated)."""
    self._mngr.reload()
    return sorted(int(s) for s in self._mngr.all_steps())

  def latest_step(self) -> int | None:
    """The newest step in :meth:`all_steps`, or ``None``; :meth:`restore_latest` may fall back to an older one."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def is_due(self, step: int) -> bool:
    """Whether :meth:`save` writes a checkpoint at ``step`` without ``force`` (never at step 0)."""
    return step > 0 and any(f and step % f == 0 for f in (self.snapshot_freq, self.preemption_freq))

  def is_snapshot(self, step: int) -> bool:
    """Whether a checkpoint at ``step`` is a periodic snapshot (kept ``keep_snapshots`` deep) or a preemption one."""
    return bool(self.snapshot_freq) and step % self.snapshot_freq == 0

  # -- saving --

  def save(self, state, step: int, *, force: bool = False) -> bool:
    """Write ``state`` as the checkpoint of ``step`` if it is due (or ``force``), then delete stale ones.

    Returns only once the checkpoint is committed. Then every preemption (non-periodic) checkpoint older
    than ``step`` is deleted, and periodic snapshots beyond the newest ``keep_snapshots``. An existing
    checkpoint of the same step (a corrupt one skipped by :meth:`restore_latest`, or one being redone)
    is replaced.

    Returns:
      whether a checkpoint was written.

    Raises:
      CheckpointWriteError: the write failed (e.g. no space left); what it wrote is removed first.
      ValueError: ``state['step']`` is not ``step``, or the newest checkpoint already in the directory
        belongs to another config (checked before the first write, nothing is overwritten).
    """
    step = int(step)
    if not (force or self.is_due(step)):
      return False
    if int(state["step"]) != step:
      raise ValueError(f"state['step'] is {int(state['step'])} but save was asked for step {step}")
    if not self._checked_existing:
      self._check_directory_compatible()
    meta = dict(fingerprint=self.fingerprint, config=self._config, params=self._signature, seed=self.seed,
                step=step, data_position=step, time=time.time(), digests=state_digests(state))
    path = self.directory / str(step)
    if path.exists():
      log.warning("replacing the existing checkpoint %s", path)
      self._delete(step)
    try:
      self._mngr.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                                       META_ITEM: ocp.args.JsonSave(meta)}), force=True)
      self._mngr.wait_until_finished()
    except Exception as e:  # a full disk or a failing filesystem: tensorstore reports them as ValueError and others
      self._remove_partial(step)
      before = [s for s in self.all_steps() if s != step]
      raise CheckpointWriteError(
          f"could not write the checkpoint of step {step} in {self.directory} ({type(e).__name__}: {str(e)[-300:]}); "
          f"its partial files were removed and the checkpoints before it are intact ({before}). Free space there "
          "(or move the workdir) and resume.") from e
    self._prune(step)
    return True

  def _remove_partial(self, step: int) -> None:
    """Delete what a failed save of ``step`` left: orbax's temporary directory, and the step's directory when it
    was not committed (so that the space a full disk needs is given back)."""
    for path in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
      shutil.rmtree(path, ignore_errors=True)
    path = self.directory / str(step)
    if path.exists() and not (path / _COMMIT_MARKER).is_file():
      shutil.rmtree(path, ignore_errors=True)

  def _delete(self, step: int) -> None:
    self._mngr.reload()
    if step in self._mngr.all_steps():
      self._mngr.delete(step)
    # orbax may not list a half-deleted or odd directory; it goes too
    shutil.rmtree(self.directory / str(step), ignore_errors=True)

  def _prune(self, saved: int) -> None:
    steps = self.all_steps()
    stale = [s for s in steps if s < saved and not self.is_snapshot(s)]
    if self.keep_snapshots is not None:
      snapshots = [s for s in steps if self.is_snapshot(s)]
      stale += [s for s in snapshots[:-self.keep_snapshots] if s != saved]
    for s in sorted(set(stale)):
      self._delete(s)

  def check_compatible(self) -> None:
    """ValueError if the newest readable checkpoint in the directory belongs to another config (reads metadata only)."""
    self._check_directory_compatible()

  def _check_directory_compatible(self) -> None:
    """Refuse to write into a directory whose newest readable checkpoint belongs to another config."""
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
      except CheckpointCorruptError:
        continue
      self._check_compatible(meta, self.directory / str(step))
      break
    self._checked_existing = True

  # -- restoring --

  def _read_meta(self, step: int) -> dict:
    """The JSON record of ``step`` after the cheap checks (commit markers, orbax metadata); no arrays read."""
    path = self.directory / str(step)
    for sub in (path, path / STATE_ITEM, path / META_ITEM):
      if not (sub / _COMMIT_MARKER).is_file():
        raise CheckpointCorruptError(f"{sub} has no orbax commit marker ({_COMMIT_MARKER}): a partial write")
    try:
      step_meta = json.loads((path / _STEP_METADATA).read_text())
      if not step_meta.get("commit_timestamp_nsecs"):
        raise ValueError("no commit_timestamp_nsecs")
      meta = self._mngr.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
    except Exception as e:  # orbax and the JSON decoder raise many kinds; any means unreadable
      raise CheckpointCorruptError(f"{path}: unreadable metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("step") != step or "fingerprint" not in meta:
      raise CheckpointCorruptError(f"{path}: the metadata record is not a score_jax checkpoint record of step {step}")
    return meta

  def _check_compatible(self, meta: Mapping, path) -> None:
    if meta["fingerprint"] == self.fingerprint and meta.get("seed") == self.seed:
      return
    # the config fields first: one field (model.nf) changes hundreds of parameter shapes
    problems = _differences(meta.get("config", {}), self._config, "")
    problems += _differences(meta.get("params", {}), self._signature, "params/")
    if meta.get("seed") != self.seed:
      problems.append(f"seed: {meta.get('seed')!r} in the checkpoint, {self.seed!r} now")
    if not problems:
      problems = [f"fingerprint {meta['fingerprint'][:12]}… in the checkpoint, {self.fingerprint[:12]}… now"]
    raise ValueError(f"checkpoint {path} belongs to another config; first mismatches: {problems[:_MAX_LISTED]}"
                     f"{f' (+{len(problems) - _MAX_LISTED} more)' if len(problems) > _MAX_LISTED else ''}. "
                     "Resume with the config it was written with, or use a new workdir. Nothing was overwritten.")

  def metadata(self, step: int) -> dict:
    """The JSON record saved with ``step`` (fingerprint, config, params signature, seed, data position)."""
    return self._read_meta(int(step))

  def restore(self, step: int | None = None, *, items: Sequence[str] | None = None):
    """The state saved at ``step`` (default: :meth:`latest_step`), exactly as saved.

    ``items`` (e.g. ``('ema_params', 'step')`` to evaluate or sample) restores only those entries of the
    state, reading only their arrays (orbax's partial restore): a quarter of an Adam state's bytes for the EMA
    weights. The checkpoint's metadata is checked as for a whole restore.

    Raises:
      FileNotFoundError: there is no checkpoint (of that step).
      CheckpointCorruptError: that checkpoint is partial, truncated or unreadable, or the entries restored do
        not match the digests recorded at save.
      ValueError: it belongs to another config (param shapes, config sections or seed differ).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    step = int(step)
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; there are {self.all_steps()}")
    path = self.directory / str(step)
    meta = self._read_meta(step)
    self._check_compatible(meta, path)
    abstract = self._abstract
    if items is not None:
      unknown = sorted(set(items) - set(self._abstract))
      if unknown or not items:
        raise ValueError(f"items={list(items)!r}: expected a non-empty subset of {sorted(self._abstract)}")
      abstract = {name: self._abstract[name] for name in items}
    try:
      if items is None:
        state = self._mngr.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(
            abstract)}))[STATE_ITEM]
      else:  # read by a PyTree checkpointer of its own: the manager keeps one handler per item, the standard one
        with ocp.PyTreeCheckpointer() as reader:
          state = reader.restore(path / STATE_ITEM, args=ocp.args.PyTreeRestore(
              item=abstract, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
    except Exception as e:  # truncated or missing array files surface as tensorstore/orbax errors of many kinds
      if any(m in str(e) for m in _TREE_MISMATCH):  # a whole checkpoint of another state tree (another optimizer)
        raise ValueError(f"checkpoint {path} holds a state tree that differs from this config's (an optim.* change "
                         f"such as grad_clip or weight_decay changes the optimizer state): {str(e)[:300]}. Resume "
                         "with the config it was written with, or use a new workdir. Nothing was overwritten.") from e
      _quiet_abandoned_reads(path)
      raise CheckpointCorruptError(f"{path}: unreadable arrays ({type(e).__name__}: {str(e)[:300]})") from e
    got = jax.tree.map(lambda x: (np.shape(x), np.dtype(x.dtype)), state)
    want = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), abstract)
    if got != want or ("step" in state and int(state["step"]) != step):
      raise CheckpointCorruptError(f"{path}: the restored arrays do not have the recorded shapes, dtypes or step")
    self._verify(state, meta, path)
    return state

  @staticmethod
  def _verify(state: Mapping, meta: Mapping, path) -> None:
    """CheckpointCorruptError unless the restored entries hash to the digests recorded at save (checkpoints
    written before digests were recorded have none, and pass)."""
    recorded = meta.get("digests")
    if not recorded:
      log.debug("%s records no digests (written by an older score_jax): not verified", path)
      return
    found = state_digests(state)
    bad = sorted(name for name in found if recorded.get(name) != found[name])
    if bad:
      raise CheckpointCorruptError(
          f"{path}: the arrays of {', '.join(bad)} differ from the sha256 recorded when it was saved (the files were "
          "changed or damaged after the write)")

  def restore_latest(self, *, items: Sequence[str] | None = None):
    """The state of the newest valid checkpoint (only ``items`` of it, as :meth:`restore`), or ``None`` when
    there is none (a fresh start).

    Corrupt or partial checkpoints are skipped with a warning naming them (and replaced when the run saves
    that step again); a checkpoint of another config raises ``ValueError`` (see :meth:`restore`).
    """
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, items=items)
      except CheckpointCorruptError as e:
        log.warning("skipping corrupt checkpoint %s: %s", self.directory / str(step), e)
        continue
      self._checked_existing = True
      log.info("resuming from %s", self.directory / str(step))
      return state
    return None

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
