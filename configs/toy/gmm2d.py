"""The embedded 2-D default: a Gaussian mixture with exact scores and densities (no download).

Trains a small time-conditioned MLP score model by continuous denoising score matching under the VP SDE,
samples with the predictor-corrector sampler and the probability-flow ODE, and compares samples and ODE
log-likelihoods with the exact mixture. About 2 minutes on 2 CPU cores:

    python -m score_jax.main --config configs/toy/gmm2d.py --workdir runs/gmm2d

Expected (2 CPU cores, seed 42): sliced Wasserstein-2 of PC and ODE samples within ~2x the distance
between two independent sets of true samples of the same size, and a mean ODE NLL within ~0.1 nats
of the exact NLL (the measured numbers are in README.md, "The 2-D default"). Checkpoints go to
WORKDIR/checkpoints (orbax); running the command again resumes an interrupted run and refuses to replace
a trained model unless --config.training.overwrite=True. Variants:

    --config.training.sde=vesde   --config.training.loss=ssm_vr   --config.sampling.predictor=euler_maruyama
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "gmm2d"
  data.num_eval = 4096  # true samples held out for the metrics

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"
  training.continuous = True
  training.loss = "dsm"  # dsm | ism | ssm | ssm_vr
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.n_projections = 1  # random projections per example for ssm / ssm_vr
  training.eps = 1e-5
  training.batch_size = 512
  training.n_iters = 6000
  training.n_jitted_steps = 100  # steps fused into one jitted lax.scan call
  training.log_freq = 500
  training.snapshot_freq_for_preemption = 1000  # a checkpoint (replacing the previous) to resume from after a kill
  training.overwrite = False  # never replace a trained model in --workdir unless asked to

  config.model = model = ml_collections.ConfigDict()
  model.name = "score_mlp"
  model.features = (128, 128, 128)
  model.embedding_size = 32
  model.embedding_type = "fourier"  # of log sigma for VE, of t for VP / sub-VP; or "positional" (DDPM's)
  model.fourier_scale = 4.0
  model.ema_rate = 0.995  # short run: a 0.999 average still remembers the early weights at 6k steps
  model.sigma_min = 0.01
  model.sigma_max = 10.0  # >= the largest distance between data points (Song & Ermon 2020, technique 1)
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.num_scales = 1000

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 200
  optim.grad_clip = 1.0

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"  # the launcher runs both pc and ode for the toy
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  # Langevin step sizes from batch-averaged norms (the original). Per-example norms are unstable in 2-D:
  # |score| vanishes between modes and the step 2 alpha (snr |z| / |score|)^2 explodes there.
  sampling.snr_reduction = "batch"
  sampling.eps = 1e-3
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  # score_jax: sampler choices beyond the original's (docs in score_jax/builders.py::sampler_settings).
  sampling.N = 0  # time steps of pc / ddim / dpm_solver / heun; 0 = model.num_scales
  sampling.ode_solver = "tsit5"  # a diffrax RK solver: euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8
  sampling.ode_steps = 0  # 0 = adaptive steps (ode_rtol / ode_atol), else that many equal steps
  sampling.schedule = ""  # fast samplers' time steps: time_uniform, time_quadratic, logsnr, karras; "" = default
  sampling.eta = 0.0  # DDIM's stochasticity (0 = deterministic, 1 = ancestral)
  sampling.rho = 7.0  # exponent of the 'karras' schedule (EDM)
  # EDM's samplers (sampling.method=edm: Algorithm 2; edm_ablation: its generalised sampler; score_jax/edm.py).
  # sampling.N is their num_steps there (0 = EDM's 18); edm_sigma_min/max 0 = EDM's defaults.
  sampling.S_churn = 0.0  # stochasticity (0 = deterministic Heun); gamma_i = min(S_churn / N, sqrt(2) - 1)
  sampling.S_min = 0.0  # churn only where S_min <= sigma_i <= S_max
  sampling.S_max = float("inf")
  sampling.S_noise = 1.0  # scale of the churn's fresh noise
  sampling.edm_sigma_min = 0.0
  sampling.edm_sigma_max = 0.0
  sampling.edm_solver = "heun"  # edm_ablation: euler | heun
  sampling.edm_discretization = "edm"  # edm_ablation: vp | ve | iddpm | edm
  sampling.edm_schedule = "linear"  # edm_ablation: vp | ve | linear
  sampling.edm_scaling = "none"  # edm_ablation: vp | none
  sampling.edm_epsilon_s = 1e-3  # edm_ablation: the vp discretization's last time
  sampling.edm_alpha = 1.0  # edm_ablation: the second-order step's alpha (1 = Heun)

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.num_samples = 4096
  evaluate.batch_size = 4096
  evaluate.num_likelihood = 512  # held-out points whose NLL is computed by the ODE (exact divergence)
  evaluate.likelihood_eps = 1e-5
  evaluate.score_field_t = 0.05  # time at which the learned and exact score fields are plotted
  return config
