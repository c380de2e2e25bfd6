"""Benchmark samplers: on-device probability-flow ODE vs the original's scipy round trip; PC throughput.

For ONE score function and ONE tolerance this prints

  (a) ``sampling.ode_sample`` jitted (diffrax, on device): median wall time over ``--repeats`` runs,
      compilation excluded (timed separately), and the NFE the solver reports;
  (b) what score_sde does: ``scipy.integrate.solve_ivp(method='RK45')`` from T to eps on the host in float64,
      the probability-flow drift evaluated by a jitted JAX function with a device->host round trip per
      evaluation (flatten to numpy, reshape, call, back to numpy), as the original's ``ode_func``; its wall
      time and ``solution.nfev``;
  (c) the raw wall-time ratio (scipy / on-device), the NFE and time per NFE of each, and the time-per-NFE
      ratio (the comparison at equal NFE); both from the medians, and again from the fastest run of each,
      which is steadier on a machine shared with other work;
  (d) PC sampler throughput: ``sampling.pc_sample`` jitted with reverse_diffusion + langevin, in steps/s and
      samples/s, compilation excluded.

Every timed sampler gets one untimed warm-up run first; the scipy section also times the jitted drift alone,
which splits its time per NFE into compute and host-side overhead (Python RK45 plus the round trip).

Score functions: ``mixture`` is the exact score of ``gmm.default_mixture()`` (2-D); ``mlp`` is a small
randomly initialised time-conditioned flax MLP on D dims, so that one evaluation costs what a network does.

Examples (from the repository root, with the virtualenv active)::

  python scripts/bench_sampling.py --quick
  python scripts/bench_sampling.py --score mixture --sde vesde --sigma-max 10 --batch 256
  python scripts/bench_sampling.py --score mlp --dim 64 --sde vpsde --batch 256

Numbers measured with this script are recorded in docs/benchmarks.md.
"""

# No `from __future__ import annotations`: with string annotations the flax module's dataclass transform
# looks its module up in sys.modules, which fails when a test loads this file with importlib (not a package).
import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import gmm, sampling, sde_lib, xla_cpu

Array = jax.Array

SDE_NAMES = ("vesde", "vpsde", "subvpsde")
SCORE_NAMES = ("mixture", "mlp")
MIXTURE_DIM = 2  # gmm.default_mixture() is 2-D
DEFAULT_MLP_DIM = 64
# The random MLP is preconditioned like a trained score model (see _make_mlp_score_fn): it adds to the exact
# score of N(0, MLP_DATA_STD^2 I) data, scaled by MLP_OUTPUT_SCALE, a correction of the size of that score.
# (With data std 1 the VP probability flow of the Gaussian part vanishes, which would make the ODE trivial.)
MLP_DATA_STD = 0.5
MLP_OUTPUT_SCALE = 1.0

# --quick: a smoke run of under 15 s on 2 CPU cores (mostly compilation).
QUICK = dict(batch=64, repeats=2, pc_N=100, hidden=64)
# Tolerance of the float64 reference solve of --check-accuracy. The drift it calls is float32, whose rounding
# the error estimator cannot get below: at 1e-9 scipy takes ~10x more steps for no gain (on the mixture, the
# 1e-7, 1e-8 and 1e-9 solutions agree to ~3e-5, the reference's own accuracy).
REFERENCE_TOL = 1e-8
# Calls of the jitted drift alone timed to split scipy's time per NFE into compute and host overhead.
_DRIFT_TIMING_CALLS = 30


# ---- score functions -------------------------------------------------------------------------------------

class _MLP(nn.Module):
  """``[x, t] -> hidden -> hidden -> D`` with SiLU activations, for one flattened example ``x [D]``."""

  hidden: int
  out_dim: int

  @nn.compact
  def __call__(self, x: Array, t: Array) -> Array:
    h = jnp.concatenate([x, t[None]])  # [D + 1]
    for _ in range(2):
      h = nn.silu(nn.Dense(self.hidden)(h))
    return nn.Dense(self.out_dim)(h)


def _make_mlp_score_fn(key: Array, sde: sde_lib.SDE, example_shape: tuple[int, ...], hidden: int):
  """A batched ``score_fn(x [B, ...], t [B])`` from a randomly initialised MLP (untrained).

  With ``a(t)``, ``s(t)`` the perturbation kernel of ``sde``, ``sigma_d = MLP_DATA_STD`` and
  ``c(t) = 1 / sqrt(a^2 sigma_d^2 + s^2)`` (the inverse std of ``p_t`` for N(0, sigma_d^2 I) data),
  ``score = c (-c x + MLP_OUTPUT_SCALE * net(c x, t))``: the exact score of that Gaussian plus a network term
  of the same size on a unit-scale input, as preconditioned score models are built. A raw random network
  would give the ODE a drift of arbitrary size at large noise levels.
  """
  D = math.prod(example_shape)
  net = _MLP(hidden, D)
  params = net.init(key, jnp.zeros((D,)), jnp.zeros(()))

  def one(x, t):
    a, s = sde.marginal_one(jnp.ones((), x.dtype), t)
    c = jax.lax.rsqrt((a * MLP_DATA_STD) ** 2 + s**2)
    flat = jnp.reshape(x, (D,))
    score = c * (-c * flat + MLP_OUTPUT_SCALE * net.apply(params, c * flat, t))
    return jnp.reshape(score, x.shape)

  return lambda x, t: jax.vmap(one)(x, t)


def build_score_fn(name: str, sde: sde_lib.SDE, example_shape: tuple[int, ...], *, key: Array, hidden: int):
  """The batched ``score_fn(x, t)`` named ``name`` (one of :data:`SCORE_NAMES`)."""
  if name == "mixture":
    return gmm.default_mixture().score_fn(sde)
  return _make_mlp_score_fn(key, sde, example_shape, hidden)


# ---- timing ----------------------------------------------------------------------------------------------

def _timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float], object]:
  """Median wall time (s) of ``repeats`` calls of ``fn`` (blocking on its result), all times, last result.

  ``warmup`` untimed calls go first, so that one-off costs (first transfers, lazy imports) are not timed.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times, out


def bench_ode_device(sde, score_fn, z: Array, *, rtol: float, atol: float, eps: float, solver: str,
                     repeats: int) -> dict:
  """(a) ``sampling.ode_sample`` jitted; compiled ahead of time so compilation is timed apart."""
  shape = z.shape
  fn = jax.jit(lambda z: sampling.ode_sample(None, sde, score_fn, shape, z=z, rtol=rtol, atol=atol, eps=eps,
                                             solver=solver))
  start = time.perf_counter()
  compiled = fn.lower(z).compile()
  compile_s = time.perf_counter() - start
  wall, times, (x, nfe) = _timed(lambda: compiled(z), repeats)
  return dict(wall_s=wall, times_s=times, compile_s=compile_s, nfe=int(nfe), samples=np.asarray(x))


def bench_ode_scipy(sde, score_fn, z: Array, *, rtol: float, atol: float, eps: float, repeats: int) -> dict:
  """(b) score_sde's ODE sampler: scipy RK45 on the host, one device round trip per drift evaluation."""
  from scipy import integrate  # an optional dependency (the `bench` extra)

  shape = z.shape
  drift_fn = jax.jit(sampling.probability_flow_drift_fn(sde, score_fn))
  start = time.perf_counter()
  jax.block_until_ready(drift_fn(np.float32(sde.T), z))  # compile once, outside the timed solves
  compile_s = time.perf_counter() - start
  # The drift alone (device arrays in and out, no numpy conversion): its compute cost per evaluation.
  t_mid = np.float32(0.5 * (sde.T + eps))
  drift_s, _, _ = _timed(lambda: drift_fn(t_mid, z), _DRIFT_TIMING_CALLS)

  def ode_func(t, y):  # as the original: flat float64 numpy -> float32 device array -> flat numpy
    x = jnp.asarray(y.reshape(shape), jnp.float32)
    return np.asarray(drift_fn(np.float32(t), x)).reshape((-1,))

  y0 = np.asarray(z, np.float64).reshape((-1,))
  solve = lambda: integrate.solve_ivp(ode_func, (sde.T, eps), y0, rtol=rtol, atol=atol, method="RK45")
  wall, times, solution = _timed(solve, repeats)
  if not solution.success:
    raise RuntimeError(f"scipy solve_ivp failed: {solution.message}")
  samples = solution.y[:, -1].reshape(shape).astype(np.float32)
  return dict(wall_s=wall, times_s=times, compile_s=compile_s, nfe=int(solution.nfev), samples=samples,
              drift_alone_s=drift_s)


def reference_solution(sde, score_fn, z: Array, *, eps: float) -> np.ndarray:
  """A tight float64 host solve (scipy DOP853, rtol = atol = REFERENCE_TOL) to measure both samplers' errors.

  The drift is still evaluated in float32, which limits the reference to an accuracy of a few 1e-5.
  """
  from scipy import integrate

  shape = z.shape
  drift_fn = jax.jit(sampling.probability_flow_drift_fn(sde, score_fn))
  ode_func = lambda t, y: np.asarray(drift_fn(np.float32(t), jnp.asarray(y.reshape(shape), jnp.float32)))
  y0 = np.asarray(z, np.float64).reshape((-1,))
  solution = integrate.solve_ivp(lambda t, y: ode_func(t, y).reshape((-1,)), (sde.T, eps), y0,
                                 rtol=REFERENCE_TOL, atol=REFERENCE_TOL, method="DOP853")
  if not solution.success:
    raise RuntimeError(f"reference solve failed: {solution.message}")
  return solution.y[:, -1].reshape(shape)


def bench_pc(sde, score_fn, shape: tuple[int, ...], *, eps: float, repeats: int, key: Array) -> dict:
  """(d) ``sampling.pc_sample`` jitted with reverse_diffusion + langevin (1 corrector step, snr 0.16)."""
  fn = jax.jit(lambda key: sampling.pc_sample(key, sde, score_fn, shape, predictor="reverse_diffusion",
                                              corrector="langevin", eps=eps)[0])
  start = time.perf_counter()
  compiled = fn.lower(key).compile()
  compile_s = time.perf_counter() - start
  wall, times, x = _timed(lambda: compiled(key), repeats)
  if not np.all(np.isfinite(np.asarray(x))):
    raise RuntimeError("the PC sampler produced non-finite samples")
  nfe = sampling.pc_nfe(sde.N, 1)
  return dict(wall_s=wall, times_s=times, compile_s=compile_s, N=sde.N, nfe=nfe,
              steps_per_s=sde.N / wall, samples_per_s=shape[0] / wall, nfe_per_s=nfe / wall)


# ---- command line ----------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _positive_float(text: str) -> float:
  value = float(text)
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
  return value


def _shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if not shape or any(s < 1 for s in shape):
    raise argparse.ArgumentTypeError(f"expected a per-example shape such as '3,8,8', got {text!r}")
  return shape


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="bench_sampling.py",
      description=("Time the probability-flow ODE sampler on device (diffrax, jitted) against score_sde's "
                   "scipy RK45 with a host round trip per evaluation, for the same score and tolerance; "
                   "and the throughput of the PC sampler (reverse_diffusion + langevin). "
                   "Compilation is timed apart and excluded from the reported wall times."),
      epilog=("examples:\n"
              "  python scripts/bench_sampling.py --quick\n"
              "  python scripts/bench_sampling.py --score mixture --sde vesde --sigma-max 10 --batch 256\n"
              "  python scripts/bench_sampling.py --score mlp --dim 64 --sde vpsde --batch 256"),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sde", choices=SDE_NAMES, default="vpsde", help="forward SDE (default: %(default)s)")
  parser.add_argument("--sigma-max", type=_positive_float, default=None,
                      help="VESDE sigma_max (default: the SDE's own, 50); vesde only")
  parser.add_argument("--score", choices=SCORE_NAMES, default="mixture",
                      help=("'mixture': exact score of gmm.default_mixture() (2-D); 'mlp': random "
                            "time-conditioned MLP, [x, t] -> 2 x hidden SiLU -> D (default: %(default)s)"))
  parser.add_argument("--batch", type=_positive_int, default=256,
                      help="samples per batch (default: %(default)s)")
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--dim", type=_positive_int, default=None,
                    help=f"data dimension D (mixture: must be {MIXTURE_DIM}; mlp default: {DEFAULT_MLP_DIM})")
  size.add_argument("--shape", type=_shape, default=None,
                    help="per-example shape for the mlp score, e.g. '3,8,8' (flattened into the MLP)")
  parser.add_argument("--hidden", type=_positive_int, default=256,
                      help="MLP hidden width (default: %(default)s)")
  parser.add_argument("--rtol", type=_positive_float, default=1e-5,
                      help="ODE relative tolerance, both solvers (default: %(default)s)")
  parser.add_argument("--atol", type=_positive_float, default=1e-5,
                      help="ODE absolute tolerance, both solvers (default: %(default)s)")
  parser.add_argument("--eps", type=_positive_float, default=1e-3,
                      help="final time of every sampler (default: %(default)s)")
  parser.add_argument("--solver", choices=sorted(sampling.ODE_SOLVERS), default="tsit5",
                      help="on-device RK 5(4) pair; dopri5 is scipy's RK45 tableau (default: %(default)s)")
  parser.add_argument("--repeats", type=_positive_int, default=3,
                      help="timed runs of each sampler; the median is reported (default: %(default)s)")
  parser.add_argument("--pc-N", dest="pc_N", type=_positive_int, default=1000,
                      help="PC sampler steps N (the SDE's N) (default: %(default)s)")
  parser.add_argument("--no-pc", action="store_true", help="skip the PC sampler benchmark")
  parser.add_argument("--no-scipy", action="store_true",
                      help="skip the scipy benchmark (b) and the ratios (c)")
  parser.add_argument("--check-accuracy", action="store_true",
                      help=(f"also solve with scipy DOP853 at rtol = atol = {REFERENCE_TOL:g} (float64 "
                            "state, float32 drift: good to a few 1e-5) and print the max error of each ODE "
                            "sampler against it (untimed)"))
  parser.add_argument("--seed", type=int, default=0,
                      help="PRNG seed of the prior sample and the MLP (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help=("smoke run (under 15 s on 2 CPU cores): batch {batch}, repeats {repeats}, "
                            "pc-N {pc_N}, hidden {hidden}, overriding those options").format(**QUICK))
  return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Parse and validate ``argv``; every error is raised here, before any compilation."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.quick:
    for name, value in QUICK.items():
      setattr(args, name, value)
  if args.score == "mixture":
    if args.shape is not None or (args.dim is not None and args.dim != MIXTURE_DIM):
      got = f"--shape {args.shape}" if args.shape is not None else f"--dim {args.dim}"
      parser.error(f"--score mixture is the {MIXTURE_DIM}-D default mixture; got {got}. Use --score mlp.")
    args.example_shape = (MIXTURE_DIM,)
  else:
    args.example_shape = args.shape or (args.dim or DEFAULT_MLP_DIM,)
  if args.sigma_max is not None and args.sde != "vesde":
    parser.error(f"--sigma-max applies to --sde vesde only, got --sde {args.sde}.")
  if not args.eps < 1.0:
    parser.error(f"--eps must lie in (0, T) = (0, 1), got {args.eps}.")
  sigma_min = sde_lib.VESDE.sigma_min
  if args.sde == "vesde" and args.sigma_max is not None and args.sigma_max <= sigma_min:
    parser.error(f"--sigma-max must exceed the VESDE sigma_min {sigma_min}, got {args.sigma_max}.")
  beta_max = sde_lib.VPSDE.beta_max
  if args.sde != "vesde" and not args.no_pc and args.pc_N <= beta_max:
    # The DDPM betas are beta(t) / N; at or above 1 the Langevin step sizes are NaN (see sde_lib).
    parser.error(f"--pc-N must exceed beta_max = {beta_max} for --sde {args.sde} (the discrete betas "
                 f"beta_max / N must be < 1), got {args.pc_N}.")
  return args


def _environment_line() -> str:
  devices = jax.devices()
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    usable = os.cpu_count()
  return (f"jax {jax.__version__} | backend {jax.default_backend()} | devices "
          f"{', '.join(f'{d.platform}:{d.device_kind}' for d in devices)} | cpu_count {os.cpu_count()} "
          f"(usable {usable}) | python {platform.python_version()}")


def _ms(seconds: float) -> str:
  return f"{1e3 * seconds:10.2f} ms"


def main(argv: Sequence[str] | None = None) -> dict:
  """Run the benchmark for command-line ``argv`` (``sys.argv[1:]`` if None); print and return the results."""
  xla_cpu.apply()  # score_jax's CPU default, before JAX's first computation (importing score_jax sets nothing)
  args = parse_args(argv)
  print(_environment_line(), flush=True)

  sde_kwargs = dict(N=args.pc_N)
  if args.sigma_max is not None:
    sde_kwargs["sigma_max"] = args.sigma_max
  sde = sde_lib.get_sde(args.sde, **sde_kwargs)
  shape = (args.batch,) + tuple(args.example_shape)
  key_prior, key_net, key_pc = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  score_fn = build_score_fn(args.score, sde, args.example_shape, key=key_net, hidden=args.hidden)
  z = sde.prior_sampling(key_prior, shape)  # one prior sample, shared by both ODE solvers
  score_desc = ("exact score of gmm.default_mixture()" if args.score == "mixture"
                else f"random MLP [x, t] -> 2 x {args.hidden} SiLU -> {math.prod(args.example_shape)}")
  print(f"config: sde {sde} | score {args.score} ({score_desc}) | shape {shape} | rtol {args.rtol} "
        f"atol {args.atol} eps {args.eps} | repeats {args.repeats} (median reported)", flush=True)
  results = dict(args=vars(args), environment=_environment_line())

  ode_kwargs = dict(rtol=args.rtol, atol=args.atol, eps=args.eps)
  dev = bench_ode_device(sde, score_fn, z, solver=args.solver, repeats=args.repeats, **ode_kwargs)
  results["ode_device"] = dev
  print(f"(a) on-device ODE  [diffrax {args.solver}, jitted]: wall {_ms(dev['wall_s'])}  "
        f"NFE {dev['nfe']:6d}  per NFE {_ms(dev['wall_s'] / dev['nfe'])}  "
        f"(min {_ms(min(dev['times_s'])).strip()}; compile {dev['compile_s']:.2f} s)", flush=True)

  if not args.no_scipy:
    ref = bench_ode_scipy(sde, score_fn, z, repeats=args.repeats, **ode_kwargs)
    results["ode_scipy"] = ref
    print(f"(b) scipy RK45 host round trip [float64]:  wall {_ms(ref['wall_s'])}  NFE {ref['nfe']:6d}  "
          f"per NFE {_ms(ref['wall_s'] / ref['nfe'])}  (min {_ms(min(ref['times_s'])).strip()}; "
          f"drift compile {ref['compile_s']:.2f} s)", flush=True)
    raw = ref["wall_s"] / dev["wall_s"]
    per_nfe = (ref["wall_s"] / ref["nfe"]) / (dev["wall_s"] / dev["nfe"])
    max_diff = float(np.max(np.abs(ref["samples"] - dev["samples"])))
    rms = float(np.sqrt(np.mean(ref["samples"].astype(np.float64) ** 2)))
    results.update(speedup_raw=raw, speedup_per_nfe=per_nfe, max_abs_diff=max_diff)
    raw_min = min(ref["times_s"]) / min(dev["times_s"])
    results.update(speedup_raw_min=raw_min, speedup_per_nfe_min=raw_min * dev["nfe"] / ref["nfe"])
    print(f"(c) raw wall-time ratio scipy / on-device: {raw:.2f}x  |  time per NFE ratio: {per_nfe:.2f}x  |  "
          f"NFE scipy {ref['nfe']} vs on-device {dev['nfe']}  (from the minima: raw {raw_min:.2f}x, per NFE "
          f"{raw_min * dev['nfe'] / ref['nfe']:.2f}x)", flush=True)
    overhead = ref["wall_s"] / ref["nfe"] - ref["drift_alone_s"]
    results.update(scipy_overhead_per_nfe_s=overhead)
    print(f"    jitted drift alone (no host conversion): {_ms(ref['drift_alone_s']).strip()} per call, so "
          f"scipy's host-side overhead (RK45 in Python + round trip) is ~{_ms(overhead).strip()} per NFE",
          flush=True)
    print(f"    samples agree: max |scipy - on-device| = {max_diff:.2e} (sample RMS {rms:.2f})", flush=True)

  if args.check_accuracy:
    ref_x = reference_solution(sde, score_fn, z, eps=args.eps)
    errors = {name: float(np.max(np.abs(results[name]["samples"] - ref_x)))
              for name in ("ode_device", "ode_scipy") if name in results}
    results["max_abs_error"] = errors
    print(f"    accuracy vs DOP853 at tol {REFERENCE_TOL:g}: max |error| on-device {errors['ode_device']:.2e}"
          + (f", scipy RK45 {errors['ode_scipy']:.2e}" if "ode_scipy" in errors else ""), flush=True)

  if not args.no_pc:
    pc = bench_pc(sde, score_fn, shape, eps=args.eps, repeats=args.repeats, key=key_pc)
    results["pc"] = pc
    print(f"(d) PC sampler [reverse_diffusion + langevin, N={pc['N']}, NFE {pc['nfe']}]: wall "
          f"{_ms(pc['wall_s'])}  {pc['steps_per_s']:.1f} steps/s  {pc['samples_per_s']:.1f} samples/s  "
          f"{pc['nfe_per_s']:.1f} NFE/s  (compile {pc['compile_s']:.2f} s)", flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
