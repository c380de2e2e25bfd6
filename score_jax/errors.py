"""The base class of score_jax's own expected errors (standard library only, so that the command line can
name it without importing JAX or orbax)."""

__all__ = ["UserError"]


class UserError(Exception):
  """An error of the input or of the environment, not of the code: the command line prints its message as
  one ``score_jax: error:`` line (exit 1) instead of a traceback."""
