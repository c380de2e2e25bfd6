"""score_jax launcher: train, evaluate or sample a score model described by an ml-collections config.

  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d              # train + evaluate
  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d --mode eval  # re-evaluate
  python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d \
      --config.training.sde=vesde --config.training.loss=ssm_vr                            # override fields

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
flags.mark_flags_as_required(["config", "workdir"])

TOY_DATASETS = ("gmm2d",)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; config fields are set as --config.section.field=value.")
  logging.getLogger().setLevel(logging.INFO)
  config = FLAGS.config
  dataset = config.data.dataset
  if dataset not in TOY_DATASETS:
    raise app.UsageError(f"data.dataset={dataset!r} is not supported yet; supported: {list(TOY_DATASETS)} "
                         "(image datasets arrive with the training issue).")
  from score_jax import toy

  os.makedirs(FLAGS.workdir, exist_ok=True)
  result = toy.run(config, FLAGS.workdir, FLAGS.mode, progress=FLAGS.progress)
  print(json.dumps(result, indent=2))


def run():
  # Image configs import configs.default_*_configs; make that resolve from any working directory.
  configs_loader.make_importable_from_argv(sys.argv)
  if any(arg in ("-h", "--help", "--helpshort") for arg in sys.argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl would exit 1 on --help
  app.run(main)


if __name__ == "__main__":
  run()
