"""Does ``jax.checkpoint`` lower the compiled temporaries of a plain chain of convolution blocks on this backend?

  python scripts/probe_remat_cpu.py

Each block is ``h + conv(swish(conv(swish(h))))`` (16 x 16 x 16 feature maps, batch 16: 256 KiB each); the
gradient of a chain of n blocks is compiled with and without ``jax.checkpoint`` around every block and XLA's
``memory_analysis().temp_size_in_bytes`` printed. With working rematerialisation the temporaries grow by about
one feature map per block (its input); without, by every map the backward pass needs. Nothing is run.
"""

import jax
import jax.numpy as jnp

B = 16


def conv(h, w):
  return jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def blk(h, ws):
  y = conv(jax.nn.swish(h), ws[0])
  y = conv(jax.nn.swish(y), ws[1])
  return h + y


def temp_mib(n: int, remat: bool) -> float:
  f = jax.checkpoint(blk) if remat else blk
  ws = [jnp.zeros((2, 3, 3, 16, 16)) for _ in range(n)]

  def loss(ws, x):
    for w in ws:
      x = f(x, w)
    return jnp.sum(x ** 2)

  x = jnp.zeros((B, 16, 16, 16))
  return jax.jit(jax.grad(loss)).lower(ws, x).compile().memory_analysis().temp_size_in_bytes / 2**20


if __name__ == "__main__":
  print(f"backend {jax.default_backend()}, jax {jax.__version__}")
  for n in (8, 32):
    print(f"{n} blocks: {temp_mib(n, False):.2f} MiB of temporaries without remat, {temp_mib(n, True):.2f} MiB with")
