"""The metric writer of a run: TensorBoard scalars and images plus ``train_log.jsonl``, written by host 0 only.

The host gating is built in (as flax's examples make their writer with ``just_logging`` on the other hosts):
no caller asks ``jax.process_index()`` before writing a metric.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import numpy as np

from score_jax import fileio

__all__ = ["MetricWriter", "LOG_NAME", "drop_after"]

log = logging.getLogger("score_jax")

LOG_NAME = "train_log.jsonl"


def drop_after(path: pathlib.Path, step: int) -> int:
  """Rewrite the JSON-lines log ``path`` (atomically) without its records after ``step`` and without lines that
  do not parse (a write cut off by a kill); returns how many lines were dropped."""
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      dropped += 1
      continue
    if int(record.get("step", 0)) > step:
      dropped += 1
    else:
      kept.append(line)
  if dropped:
    fileio.write_bytes(str(path), "".join(f"{line}\n" for line in kept).encode())
    log.info("dropped %d records after step %d from %s (written after the checkpoint resumed from)", dropped, step,
             path)
  return dropped


class MetricWriter:
  """TensorBoard (tensorboardX, no TensorFlow) scalars and images, and one JSON line per scalar record.

  Args:
    workdir: the run's directory: ``workdir/tensorboard/`` and ``workdir/train_log.jsonl``.
    enabled: write at all (default: on host 0 only).
    resume_step: a run resumed from the checkpoint of this step: the records a killed run wrote after it (and a
      last line cut off mid-write) are dropped from ``train_log.jsonl``, and TensorBoard is told to purge the
      events after it, so that every step is logged once.
  """

  def __init__(self, workdir, enabled: bool | None = None, resume_step: int | None = None):
    self._tb = None
    self._log_path = pathlib.Path(workdir) / LOG_NAME
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    if self.enabled:
      from tensorboardX import SummaryWriter

      if resume_step is not None:
        drop_after(self._log_path, resume_step)
      purge = None if resume_step is None else resume_step + 1  # events at steps >= purge are hidden
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=purge)

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
