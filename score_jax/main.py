r"""score_jax launcher: train, evaluate or sample a score model described by an ml-collections config.

  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d              # train + evaluate
  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d --mode eval  # re-evaluate
  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d \
      --config.training.sde=vesde --config.training.loss=ssm_vr                            # override fields

Image configs (the original's, under configs/):

  python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve --dry_run
  python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve   # train / resume
  python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve --mode eval \
      --config.eval.enable_bpd=True                                                       # loss, bits/dim
  python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve --mode eval \
      --checkpoint=all --config.eval.enable_sampling=True --config.eval.fid_stats=stats.npz  # FID over training
  python -m score_jax.main --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve --mode sample \
      --num_samples=64 [--checkpoint=STEP | --checkpoint=CONVERTED_DIR]

Data: data.dataset is a tfds name (CIFAR10, SVHN, CELEBA, LSUN; data.data_dir or $TFDS_DATA_DIR), or 'folder'
(data.root = a folder or .tar.gz of class subfolders of images) or 'npz' (data.root = an .npz with 'images').

Any config field is set with --config.<section>.<field>=<value>; the config file's docstring says what it
reproduces. (Developers: this file stays thin; the work happens in modules that tests call directly.)
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from score_jax import configs_loader

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file, e.g. configs/toy/gmm2d.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples, figures and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                  "train: train (then evaluate, for the 2-D default); eval: evaluate the latest checkpoint; "
                  "sample: write samples of the latest checkpoint.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("dry_run", False, "Image configs, --mode train: build everything, trace one fused train step, open "
                  "the data and check existing checkpoints, then stop before the first step (nothing is written).")
flags.DEFINE_string("checkpoint", None, "--mode eval/sample: a step number, or the directory of an original checkpoint "
                    "converted with python -m score_jax.convert (default: the newest checkpoint in --workdir); "
                    "--mode eval also takes 'all' (every checkpoint in --workdir, oldest first, each into "
                    "eval/step_N.json; those already evaluated with the same settings are kept).")
flags.DEFINE_integer("num_samples", None, "--mode sample: how many samples (default: eval.num_samples).")
flags.DEFINE_bool("step_lines", False, "--mode train: print 'step N' after each fused call (for resume tests).")
flags.DEFINE_bool("traceback", False, "Show the Python traceback of errors in the input (config, data, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])

TOY_DATASETS = ("gmm2d",)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; config fields are set as --config.section.field=value.")
  logging.getLogger().setLevel(logging.INFO)
  config = FLAGS.config
  if config.data.dataset in TOY_DATASETS:
    from score_jax import toy

    os.makedirs(FLAGS.workdir, exist_ok=True)
    result = toy.run(config, FLAGS.workdir, FLAGS.mode, progress=FLAGS.progress)
  else:
    try:
      result = _run_images(config)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
      if FLAGS.traceback:
        raise
      print(f"score_jax: error: {e}\n(--traceback shows where it was raised)", file=sys.stderr, flush=True)
      sys.exit(1)
  print(json.dumps(result, indent=2))


def _run_images(config):
  from score_jax import parallel, run_lib

  if FLAGS.mode != "train" and FLAGS.dry_run:
    raise ValueError("--dry_run applies to --mode train.")
  parallel.initialize_distributed()  # no-op for one process
  if FLAGS.mode == "train":
    if FLAGS.dry_run:
      return run_lib.dry_run(config, FLAGS.workdir)
    return run_lib.train_and_evaluate(config, FLAGS.workdir, progress=FLAGS.progress, step_lines=FLAGS.step_lines)
  if FLAGS.mode == "eval":
    return run_lib.evaluate(config, FLAGS.workdir, checkpoint=FLAGS.checkpoint, progress=FLAGS.progress)
  return run_lib.sample(config, FLAGS.workdir, checkpoint=FLAGS.checkpoint, num_samples=FLAGS.num_samples,
                        progress=FLAGS.progress)


def run():
  # Image configs import configs.default_*_configs; make that resolve from any working directory.
  configs_loader.make_importable_from_argv(sys.argv)
  if any(arg in ("-h", "--help", "--helpshort") for arg in sys.argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl would exit 1 on --help
  app.run(main)


if __name__ == "__main__":
  run()
