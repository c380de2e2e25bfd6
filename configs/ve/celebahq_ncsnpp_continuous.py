r"""NCSN++ trained with the continuous VE SDE on CelebA-HQ 1024x1024: the paper's 1024px samples.

No number is reported for it (the paper shows samples; Google did not release this checkpoint).

Standalone like the original (it does not import a default): batch 8, 2000 noise scales, sigma_max 1348,
a 16-channel NCSN++ with 8 resolutions. The original set ``config.device`` to a torch device; JAX needs no
such field, so it is left out. ``data.tfrecords_path`` is the original's; point it at your copy.

    python -m score_jax.main --config configs/ve/celebahq_ncsnpp_continuous.py \
        --workdir runs/ve/celebahq_ncsnpp_continuous

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 8
  training.n_iters = 2400001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000
  training.snapshot_sampling = True
  training.sde = "vesde"
  training.continuous = True
  training.likelihood_weighting = False
  training.reduce_mean = False
  # score_jax-only fields (the same as in configs/default_*_configs.py):
  training.loss = "dsm"
  training.eps = 1e-5
  training.n_projections = 1
  training.overwrite = False
  training.parallel = "jit"
  training.bf16 = False
  training.keep_snapshots = 0
  training.snapshot_num_samples = 64
  training.grad_accum_steps = 1
  training.label_dropout = 0.0  # score_jax: class-conditional models: P(label -> null class)

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.probability_flow = False
  sampling.snr = 0.15
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  # score_jax-only fields (the same as in configs/default_*_configs.py):
  sampling.eps = 1e-3
  sampling.snr_reduction = "batch"
  sampling.ode_rtol = 1e-5
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
  evaluate.batch_size = 1024
  evaluate.num_samples = 50000
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 96
  # score_jax-only fields (the same as in configs/default_*_configs.py):
  evaluate.bpd_num_repeats = 5
  evaluate.bpd_num_examples = 0
  evaluate.inception_weights = ""
  evaluate.fid_stats = ""
  evaluate.resize = "tf"

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CelebAHQ"
  data.image_size = 1024
  data.centered = False
  data.random_flip = True
  data.uniform_dequantization = False
  data.num_channels = 3
  data.root = ""  # score_jax-only, as in configs/default_*_configs.py
  data.data_dir = ""  # score_jax-only
  data.tfrecords_path = "/atlas/u/yangsong/celeba_hq/-r10.tfrecords"

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.sigma_max = 1348
  model.num_scales = 2000
  model.ema_rate = 0.9999
  model.sigma_min = 0.01
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.dropout = 0.0
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "output_skip"
  model.progressive_input = "input_skip"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.fourier_scale = 16
  model.conv_size = 3
  model.embedding_type = "fourier"
  model.remat = "none"  # score_jax: rematerialisation (configs/default_*_configs.py)
  model.label_dim = 0  # score_jax: classes of a class-conditional model (0: unconditional)

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config
