"""Benchmark FID feature extraction: ``inception.apply`` images/s at batch 50 on the present device.

Times the public ``score_jax.inception.apply`` (input check, resize to 299x299, network, pool3 and logits)
on one batch of random images, as FID evaluation calls it. The first call (compilation plus one run) is
timed apart; then the median and the fastest of ``--repeats`` calls give images/s. Without ``--weights``
the network has random weights (speed does not depend on their values).

Examples (from the repository root, with the virtualenv active)::

  python scripts/bench_inception.py
  python scripts/bench_inception.py --batch 50 --size 32 --repeats 5 --weights inception_fid.npz

The last line printed is a JSON object with the numbers; docs/benchmarks.md records measured ones.
"""

import argparse
import json
import os
import platform
import statistics
import time
from typing import Sequence

import jax
import numpy as np

from score_jax import inception, xla_cpu


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A state_dict of the FID Inception's keys and shapes: He-normal weights, near-identity BatchNorm."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in inception.expected_state_dict_shapes().items():
    if key.endswith("running_var") or key.endswith("bn.weight"):
      value = np.ones(shape)
    elif key.endswith("running_mean") or key.endswith("bias"):
      value = np.zeros(shape)
    else:  # conv OIHW and fc [1008, 2048]: fan-in is everything but the first axis
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    out[key] = value.astype(np.float32)
  return out


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=_positive_int, default=50, help="images per call (default 50)")
  parser.add_argument("--size", type=_positive_int, default=32, help="input side in pixels, resized to 299 inside")
  parser.add_argument("--repeats", type=_positive_int, default=3, help="timed calls after the first (default 3)")
  parser.add_argument("--precision", choices=("highest", "default"), default="highest",
                      help="convolution precision ('highest' is what parity needs; matters on GPU only)")
  parser.add_argument("--weights", default=None, help="converted .npz; random weights when absent")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
  xla_cpu.apply()  # score_jax's CPU default, before JAX's first computation (importing score_jax sets nothing)
  args = parse_args(argv)
  device = jax.devices()[0]
  print(f"backend {jax.default_backend()} device {device.device_kind} | {platform.processor() or platform.machine()}"
        f" | {os.cpu_count()} CPUs | load average {os.getloadavg()}")
  variables = (inception.load_weights(args.weights) if args.weights
               else inception.from_pytorch_state_dict(random_state_dict()))
  images = jax.device_put(
    np.random.default_rng(1).uniform(size=(args.batch, args.size, args.size, 3)).astype(np.float32))
  precision = None if args.precision == "default" else args.precision

  def run():
    return jax.block_until_ready(inception.apply(variables, images, precision=precision))

  start = time.perf_counter()
  out = run()
  first_call_s = time.perf_counter() - start
  assert out["pool3"].shape == (args.batch, 2048) and bool(np.isfinite(out["pool3"]).all())
  times = []
  for i in range(args.repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
    print(f"repeat {i + 1}/{args.repeats}: {times[-1]:.3f} s = {args.batch / times[-1]:.2f} images/s")
  median = statistics.median(times)
  result = {
    "benchmark": "inception_features",
    "backend": jax.default_backend(),
    "device": device.device_kind,
    "batch": args.batch,
    "input_size": args.size,
    "precision": args.precision,
    "weights": args.weights or "random",
    "first_call_s": round(first_call_s, 3),
    "median_s": round(median, 4),
    "images_per_s": round(args.batch / median, 3),
    "best_images_per_s": round(args.batch / min(times), 3),
    "repeats": args.repeats,
    "load_average_after": [round(x, 2) for x in os.getloadavg()],
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
