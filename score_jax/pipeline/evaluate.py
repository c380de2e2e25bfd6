"""``--mode eval``: the evaluators of :mod:`score_jax.pipeline.evaluators` on one checkpoint or on every one."""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re
import time
from typing import Any, Sequence

import jax
import ml_collections

from score_jax import builders, checkpoints, datasets, features, fileio
from score_jax.pipeline import experiment
from score_jax.pipeline import workdir as workdir_lib
from score_jax.pipeline.evaluators import bpd as bpd_evaluator
from score_jax.pipeline.evaluators import classifier as classifier_evaluator
from score_jax.pipeline.evaluators import loss as loss_evaluator
from score_jax.pipeline.evaluators import samples as samples_evaluator
from score_jax.pipeline.training import check_labelled
from score_jax.pipeline.writer import MetricWriter

__all__ = ["evaluate", "evaluate_all", "eval_settings", "write_eval", "record_path", "stored_result", "settings_hash"]

log = logging.getLogger("score_jax")


def evaluate(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None = None,
             progress: bool = True, feature_fn=None) -> dict:
  """Test-set loss, bits/dim and sample metrics of a checkpoint's EMA parameters (``--mode eval``).

  - ``eval.enable_loss``: :mod:`score_jax.pipeline.evaluators.loss` on the evaluation split (CIFAR-10 / SVHN
    test, CelebA / LSUN validation).
  - ``eval.enable_bpd``: :mod:`score_jax.pipeline.evaluators.bpd` on ``eval.bpd_dataset``.
  - ``eval.enable_sampling``: :mod:`score_jax.pipeline.evaluators.samples`: ``eval.num_samples`` samples drawn as
    by ``--mode sample``, with their features extracted as they are drawn, then FID against ``eval.fid_stats``
    (when set), Inception Score and, when the stats file holds ``pool_3`` features, KID, with the FID Inception
    weights of ``eval.inception_weights`` (``feature_fn`` replaces the network, e.g. in tests). The weights and
    the statistics are checked before any sample is drawn.

  ``eval.bpd_num_examples`` (0 = all) limits loss and bits/dim to the first examples of the split. The result
  is written, with the settings it depends on, to its record ``workdir/eval/<checkpoint>/<settings hash>.json``
  (and ``eval/<checkpoint>.json``, the newest) and TensorBoard, and returned; the same checkpoint evaluated
  again with the same settings returns that record without any work (:func:`stored_result`).
  ``checkpoint='all'`` evaluates every checkpoint of ``workdir`` (:func:`evaluate_all`). A classifier config
  reports test accuracy instead (:mod:`score_jax.pipeline.evaluators.classifier`). The workdir is locked for
  the whole call (:func:`score_jax.pipeline.workdir.lock`).
  """
  with workdir_lib.lock(workdir, "eval", enabled=jax.process_index() == 0):
    return _evaluate(config, workdir, checkpoint=checkpoint, progress=progress, feature_fn=feature_fn)


def _evaluate(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None, progress: bool,
              feature_fn) -> dict:
  if checkpoint == experiment.ALL_CHECKPOINTS:
    return evaluate_all(config, workdir, progress=progress, feature_fn=feature_fn)
  if builders.is_classifier(config):
    return _evaluate_classifier(config, workdir, checkpoint=checkpoint, progress=progress)
  exp = experiment.setup(config)
  e = config.eval
  enable_loss, enable_bpd = bool(e.get("enable_loss", True)), bool(e.get("enable_bpd", False))
  enable_sampling = bool(e.get("enable_sampling", False))
  if not (enable_loss or enable_bpd or enable_sampling):
    raise ValueError("nothing to evaluate: set eval.enable_loss, eval.enable_bpd and/or eval.enable_sampling to True.")
  reference = samples_evaluator.prepare(config, feature_fn) if enable_sampling else None  # before any work
  eval_ds = datasets.get_dataset(config, "eval", num_threads=4) if enable_loss else None
  bpd_split = "train" if e.get("bpd_dataset", "test") == "train" else "eval"
  if enable_bpd:
    datasets.get_dataset(config, bpd_split, num_threads=1)  # fail on missing data before loading anything
  params, tag, step = experiment.load_params(exp, workdir, checkpoint)
  found = stored_result(workdir, tag, eval_settings(config, reference.feature_fn if reference is not None else None))
  if found is not None:
    log.info("%s: evaluated before with the same settings; reusing %s", tag, record_path(workdir, tag,
                                                                                        found["settings"]))
    return found
  experiment.announce(experiment.summary_line(exp, "eval", f"checkpoint {tag}", batch_size=e.batch_size))
  result: dict[str, Any] = dict(checkpoint=tag, step=step)
  t0 = time.time()
  if enable_loss:
    result.update(loss_evaluator.run(exp, params, eval_ds, progress=progress))
  if enable_bpd:
    result.update(bpd_evaluator.run(exp, params, bpd_split, progress=progress))
  if reference is not None:
    result.update(samples_evaluator.run(exp, params, tag, workdir, reference, progress=progress))
  result["seconds"] = time.time() - t0
  write_eval(config, workdir, result, ("loss", "bpd", "fid", "inception_score", "kid"),
             reference.feature_fn if reference is not None else None)
  return result


def _evaluate_classifier(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None,
                         progress: bool) -> dict:
  exp = experiment.setup(config)
  if checkpoint not in (None, "", "latest") and not re.fullmatch(r"\d+", str(checkpoint)):
    raise ValueError(f"--checkpoint={checkpoint!r}: a classifier is evaluated from a step of its own --workdir "
                     "(converted original classifier checkpoints are not supported).")
  ds = datasets.get_dataset(config, "eval", num_threads=4)
  check_labelled(exp, ds, "evaluation split")
  params, tag, step = experiment.load_params(exp, workdir, checkpoint)
  found = stored_result(workdir, tag, eval_settings(config))
  if found is not None:
    log.info("%s: evaluated before with the same settings; reusing %s", tag,
             record_path(workdir, tag, found["settings"]))
    return found
  experiment.announce(experiment.summary_line(exp, "eval", f"checkpoint {tag}", batch_size=config.eval.batch_size))
  t0 = time.time()
  result: dict[str, Any] = dict(checkpoint=tag, step=step)
  result.update(classifier_evaluator.run(exp, params, ds, progress=progress))
  result["seconds"] = time.time() - t0
  write_eval(config, workdir, result, ("accuracy", "loss"))
  return result


def eval_settings(config: ml_collections.ConfigDict, feature_fn=None) -> dict:
  """What an evaluation's numbers depend on besides the checkpoint (recorded with them; see :func:`evaluate_all`).

  Besides the config sections: with ``feature_fn`` (sample metrics) its tag (the weights' sha256 for the FID
  Inception, wherever the weights were found) and the sha256 of the ``eval.fid_stats`` file, so that new weights
  or statistics rewritten at the same path count as other settings.
  """
  settings = dict(seed=int(config.seed), eval=config.eval.to_dict(), sampling=config.sampling.to_dict(),
                  data=config.data.to_dict())
  if feature_fn is not None:
    settings["features"] = features.feature_tag(feature_fn)
    stats = config.eval.get("fid_stats", "") or ""
    if stats:
      settings["fid_stats_sha256"] = fileio.sha256_file(stats)
  return json.loads(json.dumps(settings))


def settings_hash(settings: dict) -> str:
  """The first 12 hex digits of the sha256 of ``settings`` (canonical JSON): the name of their record."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def record_path(workdir, tag: str, settings: dict) -> pathlib.Path:
  """``workdir/eval/<checkpoint>/<settings hash>.json``: the one record of a checkpoint under these settings."""
  return pathlib.Path(workdir) / "eval" / tag / f"{settings_hash(settings)}.json"


def stored_result(workdir, tag: str, settings: dict) -> dict | None:
  """The result recorded for checkpoint ``tag`` under exactly ``settings``, or None."""
  path = record_path(workdir, tag, settings)
  try:
    found = json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except ValueError as e:  # a record cut short by a kill before the atomic writes: evaluate again
    log.warning("ignoring unreadable evaluation record %s (%s)", path, e)
    return None
  return found if found.get("settings") == settings else None


def write_eval(config: ml_collections.ConfigDict, workdir, result: dict, scalars: Sequence[str],
               feature_fn=None) -> None:
  """``result`` with its settings to its record ``workdir/eval/<checkpoint>/<settings hash>.json`` (one per
  settings: an evaluation with other settings never replaces it), a copy to ``workdir/eval/<checkpoint>.json``
  (the newest evaluation of that checkpoint), and ``scalars`` of it to TensorBoard."""
  result["settings"] = eval_settings(config, feature_fn)
  with MetricWriter(workdir) as writer:
    if not writer.enabled:
      return
    record = record_path(workdir, result["checkpoint"], result["settings"])
    record.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_json(str(record), result)
    fileio.write_json(str(record.parent.parent / f"{result['checkpoint']}.json"), result)
    # a metric reported as unavailable (None, e.g. the Inception Score without logits) has no scalar
    writer.scalars(result["step"] or 0, {f"eval/{k}": result[k] for k in scalars if result.get(k) is not None})


def evaluate_all(config: ml_collections.ConfigDict, workdir, *, progress: bool = True, feature_fn=None) -> dict:
  """:func:`evaluate` of every checkpoint in ``workdir`` (``--checkpoint=all``), oldest first.

  The original evaluates its checkpoints ``eval.begin_ckpt`` to ``eval.end_ckpt`` in one job; here every
  checkpoint present is evaluated, each into its own record (:func:`write_eval`) and TensorBoard at its step (a
  curve of loss / bits/dim / FID over training). A checkpoint with a record of the same settings
  (:func:`eval_settings`) is not evaluated again, and sampling resumes within a checkpoint, so a killed job
  restarts where it stopped. Corrupt checkpoints are skipped with a warning.
  """
  exp = experiment.setup(config)
  directory = pathlib.Path(workdir) / checkpoints.SUBDIR
  all_flag = experiment.ALL_CHECKPOINTS
  if not directory.is_dir():
    raise FileNotFoundError(f"--checkpoint={all_flag}: no checkpoints in {directory}; train first (--mode train).")
  with experiment.checkpointer(exp, workdir) as ckpts:
    steps = ckpts.all_steps()
  if not steps:
    raise FileNotFoundError(f"--checkpoint={all_flag}: no checkpoints in {directory}; train first.")
  sampling = bool(config.eval.get("enable_sampling", False)) and not builders.is_classifier(config)
  if feature_fn is None and sampling:  # loaded once for all checkpoints
    feature_fn = samples_evaluator.inception_feature_fn(config)
  settings = eval_settings(config, feature_fn if sampling else None)  # as evaluate() records them
  results, reused, skipped = [], 0, []
  for step in steps:
    found = stored_result(workdir, f"step_{step}", settings)
    if found is not None:
      results.append(found)
      reused += 1
      continue
    try:
      results.append(evaluate(config, workdir, checkpoint=str(step), progress=progress, feature_fn=feature_fn))
    except checkpoints.CheckpointCorruptError as e:
      log.warning("skipping corrupt checkpoint %s: %s", directory / str(step), e)
      skipped.append(step)
  return dict(checkpoints=[r["checkpoint"] for r in results], evaluated=len(results) - reused, reused=reused,
              skipped_corrupt=skipped, results=results)
