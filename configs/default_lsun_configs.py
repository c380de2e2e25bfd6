"""Shared LSUN defaults (256x256x3) of the original score_sde configs (also CelebA-HQ/FFHQ 256).

Not an experiment: it names no ``model.name``. The experiment configs import ``get_default_configs``
and override it (the original's layout). Launching it directly stops at the missing model, which is only
useful to check that the shared fields parse:

    python -m score_jax.main --config configs/default_lsun_configs.py --workdir runs/default_lsun

Section and field names and values are the original's, so its command lines carry over. Fields that only
score_jax reads are marked ``score_jax:`` below.
"""

import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64
  training.n_iters = 2400001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000  # extra checkpoints to resume after preemption
  training.snapshot_sampling = True  # write samples at every snapshot
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False
  # score_jax: the objective. "dsm" (continuous denoising score matching) for continuous training; the
  # discrete-time configs set "smld" (VE) or "ddpm" (VP). The original derived it from sde + continuous.
  training.loss = "dsm"
  training.eps = 1e-5  # score_jax: smallest t drawn in training (the original's hard-coded eps)
  training.n_projections = 1  # score_jax: random projections per example for the ssm / ssm_vr losses
  training.overwrite = False  # score_jax: never replace a trained model in --workdir unless asked to
  training.parallel = "jit"  # score_jax: data parallelism by 'jit' over a device mesh, or 'pmap' (the original's)
  training.bf16 = False  # score_jax: run the network in bfloat16 (fp32 master weights, fp32 loss)
  # score_jax: split each step's batch into this many micro-batches whose gradients are accumulated in the
  # jitted step (same update, the memory of one micro-batch); the batch per device must be a multiple of it.
  training.grad_accum_steps = 1
  training.label_dropout = 0.0  # score_jax: class-conditional models: P(label -> null class)
  training.keep_snapshots = 0  # score_jax: periodic snapshots kept (the newest); 0 keeps all, as the original
  training.snapshot_num_samples = 64  # score_jax: samples in the grid written at each snapshot

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.075
  sampling.eps = 1e-3  # score_jax: the reverse process stops at t = eps (the original's hard-coded 1e-3)
  # score_jax: Langevin step sizes from batch-averaged norms, as the original.
  sampling.snr_reduction = "batch"
  sampling.ode_rtol = 1e-5  # score_jax: probability-flow ODE tolerances (the original's scipy RK45 values)
  sampling.ode_atol = 1e-5
  sampling.class_label = -1  # score_jax: class-conditional models: the class (-1: random; label_dim: null)
  sampling.guidance = 1.0  # score_jax: classifier-free guidance weight w (1: conditional; 0: unconditional)
  # score_jax: sampler choices beyond the original's (docs in score_jax/builders.py::sampler_settings).
  sampling.N = 0  # time steps of pc / ddim / dpm_solver / heun; 0 = model.num_scales
  sampling.ode_solver = "tsit5"  # a diffrax RK solver: euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8
  sampling.ode_steps = 0  # 0 = adaptive steps (ode_rtol / ode_atol), else that many equal steps
  sampling.schedule = ""  # fast samplers' time steps: time_uniform, time_quadratic, logsnr, karras; "" = default
  sampling.eta = 0.0  # DDIM's stochasticity (0 = deterministic, 1 = ancestral)
  sampling.rho = 7.0  # exponent of the 'karras' schedule (EDM)
  # score_jax: ddim / dpm_solver / heun clip each denoised estimate to the data range (DDPM's clip_denoised)
  sampling.clip_denoised = False

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_repeats = 5  # score_jax: passes over the split for bits/dim (the original's hard-coded 5)
  evaluate.bpd_num_examples = 0  # score_jax: examples per pass for loss and bits/dim; 0 = the whole split
  evaluate.inception_weights = ""  # score_jax: converted FID Inception .npz ('' = $SCORE_JAX_INCEPTION_WEIGHTS)
  evaluate.fid_stats = ""  # score_jax: reference statistics .npz for FID (python -m score_jax.eval stats)
  # score_jax: resize to the Inception's 299x299 as TF1's resize_bilinear ("tf", the paper's FID) or pytorch-fid
  # ("pytorch"); statistics and stored features record theirs and are never mixed (docs/fid.md)
  evaluate.resize = "tf"

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "LSUN"
  data.image_size = 256
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  data.root = ""  # score_jax: images for data.dataset 'folder' (folder or .tar.gz) or 'npz' (.npz file)
  data.data_dir = ""  # score_jax: tfds data_dir ('' = $TFDS_DATA_DIR, else ~/tensorflow_datasets)

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 378
  model.num_scales = 2000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.0
  model.embedding_type = "fourier"
  # score_jax: rematerialisation in the networks (score_jax.nets.remat.REMAT_POLICIES): "none", "block"
  # (recompute each block in the backward pass) or "block_save_convs" (keep its convolution outputs only).
  model.remat = "none"
  model.label_dim = 0  # score_jax: classes of a class-conditional model (0: unconditional)

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config


def get_config() -> ml_collections.ConfigDict:
  return get_default_configs()
