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
reproduces. Errors in the input print one line `score_jax: error: ...` (--traceback shows where it was
raised). (Developers: this file stays thin; the work happens in modules that tests call directly.)
"""

from __future__ import annotations

import json
import os

from score_jax import cli

MODES = ("train", "eval", "sample")


def parser() -> cli.ArgumentParser:
  """The launcher's flags (absl spellings: --flag value, --flag=value, --noprogress, --progress=false)."""
  p = cli.ArgumentParser(prog="python -m score_jax.main", description=__doc__.split("\n\n")[0], epilog=__doc__)
  p.add_config(help="path to an ml-collections config file, e.g. configs/toy/gmm2d.py")
  p.add_argument("--workdir", required=True, help="directory for checkpoints, samples, figures and metrics")
  p.add_argument("--mode", default="train", choices=MODES,
                 help="train: train (then evaluate, for the 2-D default); eval: evaluate the latest checkpoint; "
                      "sample: write samples of the latest checkpoint (default: train)")
  p.add_bool("progress", True, "Show progress bars.")
  p.add_bool("dry_run", False, "Image configs, --mode train: build everything, trace one fused train step, open "
             "the data and check existing checkpoints, then stop before the first step (nothing is written).")
  p.add_argument("--checkpoint", default=None,
                 help="--mode eval/sample: a step number, or the directory of an original checkpoint converted "
                      "with python -m score_jax.convert (default: the newest checkpoint in --workdir); --mode "
                      "eval also takes 'all' (every checkpoint in --workdir, oldest first, each into "
                      "eval/step_N.json; those already evaluated with the same settings are kept)")
  p.add_argument("--num_samples", type=int, default=None, help="--mode sample: how many samples (default: "
                 "eval.num_samples)")
  p.add_bool("step_lines", False, "--mode train: print 'step N' after each fused call (for resume tests).")
  return p


def _main(args) -> None:
  config = args.config
  if args.mode != "train" and args.dry_run:
    raise ValueError(f"--dry_run applies to --mode train, not --mode {args.mode}; drop --dry_run.")
  if not (args.mode == "train" and args.dry_run):
    cli.check_output_dir(args.workdir, "--workdir")  # before any heavy import
  from score_jax import builders  # imports JAX

  if builders.is_toy(config):
    os.makedirs(args.workdir, exist_ok=True)  # a full disk fails here, before the toy's work
    from score_jax.pipeline import toy

    result = toy.run(config, args.workdir, args.mode, progress=args.progress)
  else:
    result = _run_images(config, args)
  print(json.dumps(result, indent=2))


def _run_images(config, args):
  from score_jax import parallel, pipeline

  parallel.initialize_distributed()  # no-op for one process
  if args.mode == "train":
    if args.dry_run:
      return pipeline.dry_run(config, args.workdir)
    return pipeline.train_and_evaluate(config, args.workdir, progress=args.progress, step_lines=args.step_lines)
  if args.mode == "eval":
    return pipeline.evaluate(config, args.workdir, checkpoint=args.checkpoint, progress=args.progress)
  return pipeline.sample(config, args.workdir, checkpoint=args.checkpoint, num_samples=args.num_samples,
                         progress=args.progress)


def main(argv=None) -> int:
  """Runs the launcher on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


def run():
  raise SystemExit(main())


if __name__ == "__main__":
  run()
