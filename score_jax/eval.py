"""FID / Inception Score / KID of sample sets, and FID reference statistics of datasets.

  # reference statistics of a train split (every example once, as uint8 images; the original's loader
  # dropped the last partial batch, this one does not)
  python -m score_jax.eval stats --dataset CIFAR10 --split train --weights inception.npz --out cifar10_train.npz
  python -m score_jax.eval stats --dataset folder --root ../shared/data/cifar10-jpeg.tar.gz --image_size 32 \
      --weights inception.npz --out cifar10_jpeg_train.npz

  # FID (and KID, with --save_features) between two statistics files, e.g. the train split against the test split
  python -m score_jax.eval fid cifar10_jpeg_train.npz cifar10_jpeg_test.npz --out train_vs_test.json

  # metrics of a --mode sample directory against those statistics
  python -m score_jax.eval metrics --samples runs/ve/samples/step_N_pc --stats cifar10_train.npz \
      --weights inception.npz --out metrics.json

``metrics`` stores each chunk's features beside the samples (``features_<weights hash>/``, the folder
``--mode eval`` writes) and reuses the ones already there for the same images, so a second run, or a run
after ``--mode eval`` of the same samples, feeds no image again (``--no_store_features`` writes nothing).

The command line over :mod:`score_jax.features` (features, statistics and metrics) and the pipeline's sample
store (:mod:`score_jax.pipeline.store`); their names are re-exported here for existing callers.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Sequence

from score_jax import cli, datasets, fileio, inception, metrics
from score_jax.features import (
  FeatureFn,
  compare_stats,
  compute_stats,
  data_config,
  dataset_features,
  feature_tag,
  features_of,
  inception_feature_fn,
  load_reference_features,
  load_reference_stats,
  metrics_of_features,
)
from score_jax.pipeline.evaluators.samples import sample_metrics

__all__ = ["FeatureFn", "inception_feature_fn", "feature_tag", "load_reference_stats", "load_reference_features",
           "features_of", "dataset_features", "compute_stats", "compare_stats", "metrics_of_features",
           "sample_metrics", "main"]


# ---- command line -----------------------------------------------------------------------------------------


def parser() -> cli.ArgumentParser:
  """``stats``, ``fid`` and ``metrics``, each with ``--help``."""
  p = cli.ArgumentParser(prog="python -m score_jax.eval", description=__doc__.split("\n\n")[0], epilog=__doc__,
                         common_flags=False)
  sub = p.add_subparsers(dest="command", required=True, metavar="{stats,fid,metrics}")
  s = sub.add_parser("stats", help="FID reference statistics of a dataset split")
  s.add_argument("--dataset", required=True, help="tfds name (CIFAR10, SVHN, CELEBA, LSUN), 'folder' or 'npz'")
  s.add_argument("--root", default="", help="folder / .tar.gz (dataset 'folder') or .npz (dataset 'npz')")
  s.add_argument("--data_dir", default="", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  s.add_argument("--category", default="", help="LSUN category")
  s.add_argument("--image_size", type=int, default=32, help="images are resized / cropped to this (default: 32)")
  s.add_argument("--split", default="train", choices=["train", "test"])
  s.add_argument("--limit", type=int, default=None, help="only N examples (default: all), chosen by --subset")
  s.add_argument("--subset", default="stratified", choices=["stratified", "random"],
                 help="which N examples --limit takes: every class its share (splits with labels; default) or a "
                      "seeded uniform draw; recorded in the stats file")
  s.add_argument("--seed", type=int, default=0, help="seed of the --limit subset (default: 0)")
  s.add_bool("save_features", False, "Also store pool3 features (for KID) and logits.")
  f = sub.add_parser("fid", help="FID (and KID) between two statistics files, e.g. train split vs test split")
  f.add_argument("stats", nargs=2, metavar="STATS", help="two .npz files from eval stats (same --weights and --resize)")
  f.add_argument("--out", default=None, help="write the result as JSON here")
  m = sub.add_parser("metrics", help="FID / IS / KID of a --mode sample directory")
  m.add_argument("--samples", required=True, help="directory with samples_*.npz chunks")
  m.add_argument("--stats", default=None, help="reference statistics .npz for FID (and KID if it holds pool_3)")
  m.add_argument("--limit", type=int, default=None, help="only the first N samples (default: all)")
  m.add_argument("--is_splits", type=int, default=10, help="Inception Score splits (score_sde reports 1)")
  m.add_argument("--out", default=None, help="write the metrics as JSON here")
  m.add_bool("store_features", True, "Reuse and store the features in SAMPLES/features_<weights hash>/, as "
             "--mode eval does (--no_store_features: feed every sample and write nothing beside them)",
             false_aliases=("--no_store_features",))
  for q in (s, m):
    q.add_argument("--weights", required=True, help="converted FID Inception weights (.npz; python -m "
                   "score_jax.inception convert writes them)")
    q.add_argument("--sha256", default=None, help="expected sha256 of the weights file")
    q.add_argument("--batch_size", type=int, default=200)
    q.add_argument("--resize", default=inception.DEFAULT_RESIZE, choices=list(inception.RESIZE_CONVENTIONS),
                   help="how images reach 299x299: 'tf' (TF1 resize_bilinear, as the paper's FID; default) or "
                        "'pytorch' (pytorch-fid's); statistics and samples must use the same")
    q.add_bool("progress", True, "Show progress bars.", false_aliases=("--no_progress",))
  s.add_argument("--out", required=True, help="the .npz to write (mu, sigma); never overwritten")
  return p


def _main(args) -> None:
  if args.command == "fid":
    result = compare_stats(*args.stats)  # a missing file or mixed conventions fail before any work
    if args.out:
      fileio.write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return
  if args.batch_size < 1:
    raise ValueError(f"--batch_size must be positive; got {args.batch_size}.")
  if args.command == "stats":
    if pathlib.Path(args.out).exists():
      raise FileExistsError(f"{args.out} exists; choose another --out (nothing was overwritten).")
    cli.check_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    config = data_config(args.dataset, root=args.root, data_dir=args.data_dir, image_size=args.image_size,
                         category=args.category)
    datasets.get_dataset(config, args.split, batch_size=args.batch_size, process_index=0, process_count=1)
    feature_fn = inception_feature_fn(args.weights, args.sha256, resize=args.resize)
    result = compute_stats(config, args.split, feature_fn, args.out, batch_size=args.batch_size, limit=args.limit,
                           subset=args.subset, seed=args.seed, save_features=args.save_features,
                           progress=args.progress)
  else:
    if not os.path.isdir(args.samples):
      raise FileNotFoundError(f"--samples {args.samples} is not a directory; give the samples/step_N_* directory "
                              "that --mode sample wrote.")
    if args.stats:
      metrics.load_stats(args.stats)
    reference = load_reference_features(args.stats)
    feature_fn = inception_feature_fn(args.weights, args.sha256, resize=args.resize)
    result = sample_metrics(args.samples, feature_fn, stats=args.stats, reference_features=reference,
                            batch_size=args.batch_size, limit=args.limit, is_splits=args.is_splits,
                            progress=args.progress, store_features=args.store_features)
    if args.out:
      fileio.write_json(args.out, result)
  print(json.dumps(result, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m score_jax.eval`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


if __name__ == "__main__":
  sys.exit(main())
