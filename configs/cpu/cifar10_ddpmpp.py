r"""A small DDPM++ (continuous VP SDE) for CIFAR-10 on a CPU: the launcher on real data before renting a GPU.

``vp/cifar10_ddpmpp_continuous.py`` shrunk to 1.75M parameters (nf 32, channel multipliers 1, 2, 2, two residual
blocks per level, attention at 16 px, no dropout), trained for 3000 steps at batch 32 (96,000 images, about two
epochs) with a short warm-up and a faster EMA, sampled with DPM-Solver++(2M) in 10 steps, each denoised estimate
clipped to the data range (``sampling.clip_denoised``). It reads the CIFAR-10 images from an image folder or
``.tar.gz`` of class folders (``data.root``, e.g. the archive of ``../shared/data``). The README's "A CPU-scale
run on real CIFAR-10" gives the commands, the time, the FID it reached and its samples:

    python -m score_jax.main --config configs/cpu/cifar10_ddpmpp.py --workdir runs/cifar10_cpu \
        --config.data.root=../shared/data/cifar10-jpeg.tar.gz

then ``--mode eval`` with ``--config.eval.inception_weights`` and ``--config.eval.fid_stats`` for the FID of
``eval.num_samples`` samples (docs/fid.md). The full-size settings are the parent config's.
"""

from configs.vp.cifar10_ddpmpp_continuous import get_config as get_parent_config


def get_config():
  config = get_parent_config()

  data = config.data
  data.dataset = "folder"
  data.root = ""  # the CIFAR-10 folder or .tar.gz: --config.data.root=...

  model = config.model
  model.nf = 32
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.0
  model.ema_rate = 0.999  # an EMA over ~1000 steps: 0.9999 would still be mostly the initial weights at the end

  training = config.training
  training.batch_size = 32
  training.n_iters = 3000
  training.n_jitted_steps = 1
  training.log_freq = 50
  training.eval_freq = 500
  training.snapshot_freq = 3000
  training.snapshot_freq_for_preemption = 500
  training.snapshot_num_samples = 64

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200

  sampling = config.sampling
  sampling.method = "dpm_solver"
  sampling.N = 10
  # After 3000 steps the network's noise prediction is off by a few percent at t ~ 1, where sigma = 152 turns
  # that into a denoised estimate of std ~5 on data in [-1, 1]: unclipped, every sampler ends saturated.
  sampling.clip_denoised = True

  evaluate = config.eval
  evaluate.batch_size = 500
  evaluate.num_samples = 5000
  evaluate.enable_sampling = True
  evaluate.bpd_num_examples = 1000
  return config
