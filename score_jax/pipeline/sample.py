"""``--mode sample``: samples of a checkpoint in resumable chunks, with their features when asked."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import builders, conditional, fileio, randomness, validation
from score_jax import progress as progress_lib
from score_jax.pipeline import experiment, store
from score_jax.pipeline import workdir as workdir_lib
from score_jax.pipeline.experiment import Experiment

__all__ = ["sample", "draw_samples", "sample_meta", "check_finite"]


def sample_meta(exp: Experiment, tag: str, chunk: int) -> dict:
  """What a sample directory's samples depend on (``meta.json``; a resume must match it)."""
  c = exp.config
  meta = dict(checkpoint=tag, seed=int(c.seed), sampling=c.sampling.to_dict(), model=c.model.to_dict(),
              image_shape=list(exp.image_shape), centered=bool(c.data.centered), chunk=chunk)
  return json.loads(json.dumps(meta))  # as it reads back from meta.json (tuples become lists)


def _class_settings(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """``(directory suffix, summary text)`` of a class-conditional model's class and guidance weight, e.g.
  ``("_class3_w2", " (class 3, guidance w=2)")``, so that sweeps get a sample directory each; empty for
  unconditional models."""
  g = conditional.guidance_settings(config)
  if not g["label_dim"]:
    return "", ""
  c, w = g["class_label"], f"{g['guidance']:g}"
  if c == conditional.RANDOM_CLASS:
    slug, text = "random", "random classes"
  else:
    slug, text = f"class{c}", ("the null class" if c == g["label_dim"] else f"class {c}")
  return f"_{slug}_w{w}", f" ({text}, guidance w={w})"


def check_finite(x: np.ndarray, start: int, config: ml_collections.ConfigDict) -> None:
  """FloatingPointError naming the chunk and the sampler settings if any value of the samples ``x`` [n, H, W, C]
  (samples ``start`` to ``start + n - 1``) is NaN or infinite: such samples would be written as black or
  saturated uint8 images, and FID computed on them."""
  finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
  if finite.all():
    return
  settings = ", ".join(f"{k}={v}" for k, v in builders.sampler_settings(config).items())
  raise FloatingPointError(
      f"{int((~finite).sum())} of the {len(x)} samples of the chunk starting at sample {start} are not finite "
      f"(NaN or inf) with sampling settings {settings}; nothing was written for that chunk (the chunks before it "
      "are kept). Change the sampler settings (a smaller sampling.snr, more steps) or check the checkpoint.")


def sample(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None = None,
           num_samples: int | None = None, progress: bool = True, feature_fn=None) -> dict:
  """Draw ``num_samples`` (default ``eval.num_samples``) samples with ``sampling.*`` (``--mode sample``).

  Samples are drawn in chunks of ``eval.batch_size`` and each chunk is saved (uint8 ``[n, H, W, C]`` in
  ``samples_<start>.npz``, written atomically) as soon as it is done, so a killed run resumes at the first
  missing chunk. Sample ``i`` draws its noise from ``fold_in(key, i)``: with the predictor-only or
  ``sampling.snr_reduction='per_example'`` PC samplers the samples do not depend on the chunk size or the
  device count; the original's Langevin step size (``snr_reduction='batch'``) averages gradient norms over
  the chunk, and the ODE sampler picks one step size per chunk, so there they change within those
  tolerances (the chunk size is recorded in ``meta.json`` and a resume must use the same one). A chunk with a
  non-finite sample stops the run (:func:`check_finite`) before it is written.

  With ``feature_fn`` (a :data:`score_jax.features.FeatureFn`, e.g. the FID Inception-v3), each chunk's features
  are extracted on the fly from its uint8 images as soon as the chunk exists, and saved beside it
  (:mod:`score_jax.pipeline.store`), so a restart recomputes neither samples nor features, and the metrics
  need no second pass over the images (:func:`score_jax.pipeline.store.load_features`).

  Args:
    checkpoint: None (newest), a step, or a converted original checkpoint (see
      :func:`score_jax.pipeline.experiment.load_params`).

  Returns:
    a summary with the output directory, the number of samples and chunks, the NFE per sample, and with
    ``feature_fn`` the features directory and the number of feature chunks written.

  Raises:
    WorkdirLockedError: another process writes ``workdir`` (:func:`score_jax.pipeline.workdir.lock`).
  """
  if builders.is_classifier(config):
    raise ValueError("--mode sample needs a score-model config; a classifier config (with a 'classifier' section) has "
                     "nothing to sample.")
  num = validation.check_int(num_samples or config.eval.num_samples, "num_samples (eval.num_samples)")
  with workdir_lib.lock(workdir, "sample", enabled=jax.process_index() == 0):
    exp = experiment.setup(config)
    params, tag, _ = experiment.load_params(exp, workdir, checkpoint)
    return draw_samples(exp, params, tag, workdir, num, progress=progress, feature_fn=feature_fn)


def draw_samples(exp: Experiment, params, tag: str, workdir, num: int, *, progress: bool, feature_fn) -> dict:
  """:func:`sample` with the parameters loaded (``tag`` names their checkpoint)."""
  config = exp.config
  chunk = int(config.eval.batch_size)
  class_suffix, class_text = _class_settings(config)
  out = pathlib.Path(workdir) / "samples" / f"{tag}_{config.sampling.method}{class_suffix}"
  meta = sample_meta(exp, tag, chunk)
  meta_path = out / "meta.json"
  if meta_path.exists():
    found = json.loads(meta_path.read_text())
    changed = sorted(k for k in set(meta) | set(found) if meta.get(k) != found.get(k))
    if changed:
      raise ValueError(f"{out} holds samples drawn with other settings ({', '.join(changed)} differ); use another "
                       f"--workdir or move that folder away. Nothing was overwritten.")
  is_main = jax.process_index() == 0  # one host writes the chunks (and extracts their features)
  if is_main:
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(str(meta_path), meta)
  experiment.announce(experiment.summary_line(
      exp, "sample", f"{num} samples in chunks of {chunk} with {config.sampling.method}{class_text} | "
      f"{out}", batch_size=chunk))
  folder = None
  if feature_fn is not None and is_main:
    folder = store.features_folder(out, feature_fn)
    folder.mkdir(exist_ok=True)
  key = exp.key(randomness.SAMPLE)
  sample_fn = None
  written = reused = features_written = 0
  nfe = None
  t0 = time.time()
  for start in tqdm(range(0, num, chunk), desc="sample", unit="chunk", disable=not progress):
    count = min(chunk, num - start)
    path = store.chunk_path(out, start)
    images = None
    if store.valid_chunk(path, count, exp.image_shape):
      reused += 1
    else:
      if sample_fn is None:
        sample_fn = experiment.make_sample_fn(exp, chunk, count_progress=progress)
      with experiment.compiling(f"the {config.sampling.method} sampler (chunks of {chunk})",
                                enabled=written == 0), \
          progress_lib.bar(f"samples {start}-{start + count - 1}", total=nfe, enabled=progress):
        x, nfe_chunk = sample_fn(params, key, start)
        x = np.asarray(x)
      check_finite(np.asarray(x)[:count], start, config)
      images = experiment.to_uint8(exp, x)[:count]
      nfe = int(nfe_chunk)
      if is_main:
        fileio.savez(str(path), images=images, index=np.arange(start, start + count))
      written += 1
    if folder is not None:
      features_written += store.chunk_features(folder, start, count, path, images, feature_fn,
                                               batch_size=min(chunk, store.FEATURE_BATCH))
  if is_main:
    experiment.save_grid(out / "grid.png", fileio.image_grid(store.load_samples(out, limit=experiment.GRID_MAX)))
  result = dict(directory=str(out), num_samples=num, chunks_written=written, chunks_reused=reused,
                nfe_per_sample=nfe, seconds=time.time() - t0)
  if folder is not None:
    result.update(features=str(folder), feature_chunks_written=features_written)
  return result
