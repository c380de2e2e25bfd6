r"""Controllable generation (paper Section 5 and Appendix I): inpainting, colorization, class-conditional sampling.

All three run the one PC loop of :func:`score_jax.sampling.pc_sample`:

- **Inpainting and colorization** (App. I.2) observe a linear part of the image: some pixels, or the gray
  channel. In a per-pixel orthogonal channel basis ``M`` (the identity for inpainting; for colorization one
  whose first axis is ``(1, 1, 1) / sqrt(3)``) the observed coordinates are ``mask * (M x) = mask * y``. After
  the corrector and after the predictor at time ``t`` the observed coordinates of ``x`` are replaced by a
  fresh draw of the forward process, ``a(t) y + s(t) z``, and those of ``x_mean`` by ``a(t) y``; the unknown
  coordinates follow the reverse SDE, so they are sampled from an approximation of ``p_t(x_unknown | y)``.
  The returned samples carry the observation exactly.
- **Class-conditional sampling** (App. I.1, eq. 14) follows the reverse SDE of ``p_t(x | y)``, whose score is
  ``score(x, t) + grad_x log p_t(y | x)``, the second term from a time-dependent classifier
  (:mod:`score_jax.classifier`). :func:`guided_score_fn` builds it; any sampler then uses it.

Command line (a launcher run directory of a score model; images and masks from files)::

  python -m score_jax.controllable --task inpaint --config configs/ve/cifar10_ncsnpp_continuous.py \
      --workdir runs/ve --images images.npz --masks mask.png --out runs/ve/inpaint
  python -m score_jax.controllable --task colorize --config ... --workdir runs/ve --images gray/ --out ...
  python -m score_jax.controllable --task class --config ... --workdir runs/ve --labels 0,1,2,3 --out ... \
      --classifier_config configs/classifier/cifar10_wrn_noise_conditional.py --classifier_workdir runs/clf

Images: an ``.npz`` with ``images`` [N, H, W, C] uint8, a PNG/JPEG file, or a folder of them. Masks: an
``.npz`` with ``masks`` [H, W] or [N, H, W], or a PNG (nonzero = known pixel). Results: ``OUT/<task>.npz``
(uint8) and ``OUT/<task>.png`` (rows: input, observation, result).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import cli, randomness, sampling, sde_lib

Array = jax.Array

__all__ = ["LinearConstraint", "inpainting_constraint", "colorization_constraint", "COLOR_BASIS", "inpaint",
           "colorize", "guided_score_fn", "gray_of", "main"]

# An orthonormal basis of RGB (columns): the gray axis (1, 1, 1)/sqrt(3) and two color-difference axes.
# Coordinates in it are M^T x; the first one is sqrt(3) times the gray value.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0), np.array([-2.0, 1.0, 1.0]) / math.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / math.sqrt(2.0)], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class LinearConstraint:
  """Observed coordinates ``mask * (x @ basis) = mask * y`` of a batch (channels last).

  Attributes:
    sde: the forward SDE (its kernel ``a(t), s(t)`` noises the observation).
    y: the observation in the basis ``[B, ..., C]`` (only its masked entries matter).
    mask: 1 where observed, 0 where free, broadcastable to ``y``.
    basis: orthonormal ``[C, C]`` whose columns are the coordinate axes, or None for the pixel basis.
  """

  sde: sde_lib.SDE
  y: Array
  mask: Array
  basis: np.ndarray | None = None

  def __post_init__(self):
    y = jnp.asarray(self.y)
    try:
      mask = jnp.broadcast_to(jnp.asarray(self.mask, y.dtype), y.shape)
    except ValueError:
      raise ValueError(f"mask of shape {jnp.shape(self.mask)} does not broadcast to the images {y.shape}.") from None
    object.__setattr__(self, "y", y)
    object.__setattr__(self, "mask", mask)

  def _to(self, x):
    return x if self.basis is None else x @ jnp.asarray(self.basis, x.dtype)

  def _from(self, u):
    return u if self.basis is None else u @ jnp.asarray(self.basis, u.dtype).T

  def apply(self, x: Array, x_mean: Array, t: Array, noise: Array) -> tuple[Array, Array]:
    """Replace the observed coordinates by ``a(t) y + s(t) noise`` (``x``) and ``a(t) y`` (``x_mean``)."""
    mean, std = self.sde.marginal_prob(self.y, t)
    observed = mean + jax.vmap(jnp.multiply)(std, self._to(noise))
    mask = jnp.asarray(self.mask, x.dtype)
    x = self._from(self._to(x) * (1 - mask) + observed * mask)
    x_mean = self._from(self._to(x_mean) * (1 - mask) + mean * mask)
    return x, x_mean

  def final(self, x: Array) -> Array:
    """``x`` with the observed coordinates set to the observation exactly."""
    mask = jnp.asarray(self.mask, x.dtype)
    return self._from(self._to(x) * (1 - mask) + jnp.asarray(self.y, x.dtype) * mask)


def inpainting_constraint(sde: sde_lib.SDE, y: Array, mask: Array) -> LinearConstraint:
  """Known pixels: ``mask`` (1 = known) broadcastable to ``y`` ``[B, ..., C]``."""
  return LinearConstraint(sde, y, mask)


def gray_of(x: Array) -> Array:
  """The gray value ``[..., 1]`` of RGB ``[..., 3]``: the channel mean (the basis' first axis / sqrt(3))."""
  return jnp.mean(jnp.asarray(x), axis=-1, keepdims=True)


def colorization_constraint(sde: sde_lib.SDE, gray: Array) -> LinearConstraint:
  """Known gray value ``gray [B, ..., 1]`` (in the model's data scaling) of RGB samples."""
  gray = jnp.asarray(gray)
  if gray.shape[-1] != 1:
    raise ValueError(f"gray images must have one channel, got shape {gray.shape}; use gray_of(rgb) first.")
  y = jnp.concatenate([math.sqrt(3.0) * gray, jnp.zeros(gray.shape[:-1] + (2,), gray.dtype)], axis=-1)
  mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
  return LinearConstraint(sde, y, mask, COLOR_BASIS)


def inpaint(key: Array, sde: sde_lib.SDE, score_fn, y: Array, mask: Array, **pc_kwargs):
  """Inpainting with the PC sampler: ``(samples [B, ...], nfe)``; known pixels ``mask * y`` are kept exactly."""
  y = jnp.asarray(y)
  return sampling.pc_sample(key, sde, score_fn, y.shape, constraint=inpainting_constraint(sde, y, mask),
                            **pc_kwargs)


def colorize(key: Array, sde: sde_lib.SDE, score_fn, gray: Array, **pc_kwargs):
  """Colorization with the PC sampler: RGB ``(samples [B, ..., 3], nfe)`` whose gray value is ``gray``."""
  gray = jnp.asarray(gray)
  shape = gray.shape[:-1] + (3,)
  return sampling.pc_sample(key, sde, score_fn, shape, constraint=colorization_constraint(sde, gray), **pc_kwargs)


def guided_score_fn(score_fn, log_prob_grad_fn, labels: Array, scale: float = 1.0):
  """The score of ``p_t(x | y)`` (eq. 14): ``score(x, t) + scale * grad_x log p_t(y | x)``.

  ``log_prob_grad_fn(x [B, ...], t [B], labels [B])`` is a time-dependent classifier's gradient (e.g.
  :func:`score_jax.classifier.make_log_prob_grad_fn`); ``scale`` > 1 sharpens the classes (classifier
  guidance), 1 is the exact conditional.
  """
  labels = jnp.asarray(labels)
  if not np.isfinite(scale) or scale < 0:
    raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}.")
  return lambda x, t: score_fn(x, t) + scale * log_prob_grad_fn(x, t, labels)


# ---- command line ------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_npz_array(path: pathlib.Path, name: str) -> np.ndarray:
  """The array ``name`` of the .npz at ``path`` (the file given as ``--<name>``)."""
  with np.load(path) as f:
    if name not in f.files:
      raise ValueError(f"{path} has no {name!r} array (found {f.files}).")
    return f[name]


def _check_exists(path: str, flag: str) -> None:
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"--{flag} {path!r} does not exist.")


def _read_images(path: str, image_shape) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` from an .npz (``images``), an image file, or a folder of image files."""
  from PIL import Image

  _check_exists(path, "images")
  p = pathlib.Path(path)
  images = _read_npz_array(p, "images") if p.suffix == ".npz" else None
  if images is None:
    files = sorted(q for q in p.iterdir() if q.suffix.lower() in _IMAGE_SUFFIXES) if p.is_dir() else [p]
    if not files:
      raise ValueError(f"no {'/'.join(_IMAGE_SUFFIXES)} files in {path}.")
    mode = "L" if image_shape[-1] == 1 else "RGB"
    images = np.stack([np.asarray(Image.open(q).convert(mode)).reshape(Image.open(q).size[::-1] + (-1,))
                       for q in files])
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"images must be uint8 [N, H, W, C]; {path} holds {images.dtype} {images.shape}.")
  if images.shape[1:3] != tuple(image_shape[:2]):
    raise ValueError(f"images in {path} are {images.shape[1]}x{images.shape[2]}, but the model makes "
                     f"{image_shape[0]}x{image_shape[1]} (data.image_size); resize them first.")
  return images


def _read_masks(path: str, n: int, image_shape) -> np.ndarray:
  """float ``[N, H, W, 1]`` of 1 (known) / 0 from an .npz (``masks``) or an image (nonzero = known)."""
  from PIL import Image

  _check_exists(path, "masks")
  p = pathlib.Path(path)
  masks = _read_npz_array(p, "masks") if p.suffix == ".npz" else None
  if masks is None:
    masks = np.asarray(Image.open(p).convert("L"))
  masks = (np.asarray(masks) != 0).astype(np.float32)
  if masks.ndim == 2:
    masks = np.broadcast_to(masks, (n,) + masks.shape)
  if masks.shape != (n,) + tuple(image_shape[:2]):
    raise ValueError(f"masks in {path} have shape {masks.shape}; expected [H, W] or [N, H, W] = "
                     f"{(n,) + tuple(image_shape[:2])} for the {n} images.")
  return masks[..., None]


def run_task(config, task: str, workdir, out, *, images: str | None = None, masks: str | None = None,
             labels: str | None = None, checkpoint: str | None = None, classifier_config=None,
             classifier_workdir: str | None = None, scale: float = 1.0, batch_size: int | None = None,
             progress: bool = True) -> dict:
  """Read and check the inputs, load the model(s), then sample in batches; returns a summary."""
  from tqdm.auto import tqdm

  from score_jax import builders, datasets, fileio, pipeline

  exp = pipeline.setup(config)
  from score_jax import conditional

  if conditional.label_dim(config) and not conditional.label_dropout(config):
    raise ValueError(f"controllable generation uses the model's unconditional score (its null class), but this "
                     f"class-conditional model (model.label_dim={conditional.label_dim(config)}) was trained with "
                     "training.label_dropout=0, so its null class is untrained; use a model trained with "
                     "label dropout > 0 or an unconditional one.")
  shape = exp.image_shape
  centered = bool(config.data.centered)
  if task in ("inpaint", "colorize"):
    if not images:
      raise ValueError(f"--task {task} needs --images.")
    data = _read_images(images, shape)
    if task == "colorize" and shape[-1] != 3:
      raise ValueError(f"colorization needs an RGB model; data.num_channels={shape[-1]}.")
    if task == "inpaint":
      if data.shape[-1] != shape[-1]:
        raise ValueError(f"images have {data.shape[-1]} channels, the model {shape[-1]} (data.num_channels).")
      if not masks:
        raise ValueError("--task inpaint needs --masks.")
      known = _read_masks(masks, len(data), shape)
    n = len(data)
  elif task == "class":
    if not (labels and classifier_config and classifier_workdir):
      raise ValueError("--task class needs --labels, --classifier_config and --classifier_workdir.")
    try:
      label_array = np.asarray([int(v) for v in labels.split(",")], np.int32)
    except ValueError:
      raise ValueError(f"--labels must be comma-separated integers, got {labels!r}.") from None
    n = len(label_array)
  else:
    raise ValueError(f"unknown task {task!r}; expected inpaint, colorize or class.")
  params, tag, _ = pipeline.load_params(exp, workdir, checkpoint)
  score_fn = pipeline.score_fn(exp, params)
  pc = builders.sampler_kwargs(config)
  if task == "class":
    from score_jax import classifier, configs_loader

    clf_config = classifier_config
    if isinstance(clf_config, str):
      clf_config = configs_loader.load_config(clf_config)
    model, variables, clf_sde = pipeline.load_classifier(clf_config, classifier_workdir)
    num_classes = int(clf_config.classifier.num_classes)
    if label_array.min() < 0 or label_array.max() >= num_classes:
      raise ValueError(f"--labels must lie in [0, {num_classes}), got {label_array.tolist()}.")
    grad_fn = classifier.make_log_prob_grad_fn(model, variables, clf_sde)
  batch = int(batch_size or config.eval.batch_size)
  key = jax.random.fold_in(exp.key(randomness.SAMPLE), randomness.CONTROLLABLE)
  nfe = sampling.pc_nfe(exp.sde.N, pc["n_steps"], pc["predictor"], pc["corrector"])
  if task == "class":
    draw = jax.jit(lambda key, labels, offset: sampling.pc_sample(
        key, exp.sde, guided_score_fn(score_fn, grad_fn, labels, scale), labels.shape + shape, sample_offset=offset,
        **pc)[0])
  elif task == "inpaint":
    draw = jax.jit(lambda key, y, known, offset: inpaint(key, exp.sde, score_fn, y, known, sample_offset=offset,
                                                         **pc)[0])
  else:
    draw = jax.jit(lambda key, y, offset: colorize(key, exp.sde, score_fn, gray_of(y), sample_offset=offset,
                                                   **pc)[0])
  results = []
  for start in tqdm(range(0, n, batch), desc=task, unit="batch", disable=not progress):
    stop = min(start + batch, n)
    if task == "class":
      x = draw(key, jnp.asarray(label_array[start:stop]), start)
    else:
      y = datasets.scale(data[start:stop].astype(np.float32) / 255.0, centered)
      x = draw(key, y, known[start:stop], start) if task == "inpaint" else draw(key, y, start)
    results.append(pipeline.to_uint8(exp, x))
  result = np.concatenate(results)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  rows = [result]
  if task == "inpaint":
    rows = [data, (data * known).astype(np.uint8), result]
  elif task == "colorize":
    gray = np.round(data.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8).repeat(3, -1)
    rows = [data, gray, result]
  arrays = dict(samples=result, **({"labels": label_array} if task == "class" else {"inputs": data}))
  fileio.savez(str(out / f"{task}.npz"), **arrays)
  shown = min(n, 16)
  fileio.save_png(str(out / f"{task}.png"), fileio.image_grid(np.concatenate([r[:shown] for r in rows]), ncol=shown))
  return dict(task=task, checkpoint=tag, num_images=int(n), nfe_per_image=int(nfe), out=str(out))


TASKS = ("inpaint", "colorize", "class")


def parser() -> cli.ArgumentParser:
  """The flags of ``python -m score_jax.controllable`` (absl spellings, as before)."""
  p = cli.ArgumentParser(prog="python -m score_jax.controllable", description=__doc__.split("\n\n")[0],
                         epilog=__doc__)
  p.add_config(help="config of the score model's run in --workdir")
  p.add_argument("--task", required=True, choices=TASKS, help="what to generate")
  p.add_argument("--workdir", required=True, help="launcher run directory of the score model (its newest "
                 "checkpoint)")
  p.add_argument("--out", required=True, help="output directory for <task>.npz and <task>.png")
  p.add_argument("--images", default=None, help="inpaint / colorize: .npz with 'images', an image file, or a folder")
  p.add_argument("--masks", default=None, help="inpaint: .npz with 'masks' or an image (nonzero = known pixel)")
  p.add_argument("--checkpoint", default=None, help="a step or a converted original checkpoint (default: newest)")
  p.add_argument("--labels", default=None, help="class: comma-separated class labels, one sample each")
  p.add_argument("--classifier_config", default=None, help="class: config of the noise-conditional classifier run")
  p.add_argument("--classifier_workdir", default=None, help="class: run directory of the classifier")
  p.add_argument("--scale", type=float, default=1.0, help="class: guidance scale (1 = the exact conditional score)")
  p.add_argument("--batch_size", type=int, default=None, help="images per batch (default: eval.batch_size)")
  p.add_bool("progress", True, "Show progress bars.")
  return p


def _main(args) -> None:
  for flag in ("images", "masks"):
    path = getattr(args, flag)
    if path and not pathlib.Path(path).exists():
      raise FileNotFoundError(f"--{flag} {path}: no such file or folder; check the path.")
  if not pathlib.Path(args.workdir).is_dir():
    raise FileNotFoundError(f"--workdir {args.workdir} is not a directory; give the run directory that python -m "
                            "score_jax.main trained.")
  cli.check_output_dir(args.out, "--out")
  classifier_config = args.classifier_config and cli.load_config(args.classifier_config)
  result = run_task(args.config, args.task, args.workdir, args.out, images=args.images, masks=args.masks,
                    labels=args.labels, checkpoint=args.checkpoint, classifier_config=classifier_config,
                    classifier_workdir=args.classifier_workdir, scale=args.scale, batch_size=args.batch_size,
                    progress=args.progress)
  print(result)


def main(argv=None) -> int:
  """``python -m score_jax.controllable`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


def run():
  raise SystemExit(main())


if __name__ == "__main__":
  run()
