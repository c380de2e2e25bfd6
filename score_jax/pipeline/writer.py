"""The metric writer of a run: TensorBoard scalars and images plus ``train_log.jsonl``, written by host 0 only.

The host gating is built in (as flax's examples make their writer with ``just_logging`` on the other hosts):
no caller asks ``jax.process_index()`` before writing a metric.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

__all__ = ["MetricWriter", "LOG_NAME"]

LOG_NAME = "train_log.jsonl"


class MetricWriter:
  """TensorBoard (tensorboardX, no TensorFlow) scalars and images, and one JSON line per scalar record.

  Args:
    workdir: the run's directory: ``workdir/tensorboard/`` and ``workdir/train_log.jsonl``.
    enabled: write at all (default: on host 0 only).
  """

  def __init__(self, workdir, enabled: bool | None = None):
    self._tb = None
    self._log_path = pathlib.Path(workdir) / LOG_NAME
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    if self.enabled:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    with open(self._log_path, "a") as f:
      f.write(json.dumps(dict(step=step, time=time.time(), **values)) + "\n")

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(name, grid, step, dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
