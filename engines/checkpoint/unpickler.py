"""Read a PyTorch zip checkpoint (``torch.save``) without letting its pickle run code.

Imports torch and numpy only. The zip is read here (``<archive>/data.pkl`` plus raw storages
under ``<archive>/data/<key>``); ``torch.load`` is never called. Every global the pickle names
goes through :meth:`RestrictedUnpickler.find_class`:

- tensor/parameter rebuild functions resolve to *our* implementations below, which only slice
  the raw storage bytes into tensors;
- a handful of plain value types (``OrderedDict``, ``set``, ``torch.Size``, dtypes, numpy
  scalars/arrays) resolve to themselves;
- classes of ``ultralytics.*`` and ``torch.nn.modules.*`` become inert :class:`Record`s that keep
  their pickled state and run nothing;
- anything else (``os.system``, ``builtins.eval``, ``functools.partial``, ...) raises
  ``UnsafeCheckpointError`` naming the global, before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import CheckpointError, UnsafeCheckpointError

# Module prefixes whose classes are rebuilt as inert records (model layers, Ultralytics helpers).
RECORD_MODULES = ("ultralytics.", "torch.nn.modules.")

_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16", "int32", "int64",
                 "bool", "half", "float", "double", "long", "int", "short", "complex64", "complex128")
}
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "ByteStorage": torch.uint8, "CharStorage": torch.int8,
    "ShortStorage": torch.int16, "IntStorage": torch.int32, "LongStorage": torch.int64,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class Record:
    """Inert stand-in for a pickled object of a foreign class: holds ``args`` and ``state``."""

    __module_name__ = ""
    __class_name__ = ""
    # Class-level defaults: NEWOBJ creates instances through __new__ without calling __init__.
    args: tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def qualname(self) -> str:
        return f"{self.__module_name__}.{self.__class_name__}"

    def attrs(self) -> dict[str, Any]:
        """The pickled ``__dict__`` (for nn.Modules: ``_parameters``, ``_modules``, ``yaml``, ...)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"


class _StorageType:
    """What a ``torch.<X>Storage`` global resolves to: just its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor: only ever for our inert records, never a real base class's __init__.
    if isinstance(cls, type) and issubclass(cls, Record) and base is object:
        return cls()
    raise UnsafeCheckpointError(f"copyreg._reconstructor called with {cls!r}, {base!r}")


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_tensor_v2(storage: torch.Tensor, offset: int, size: Any, stride: Any, requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter rebuilt from a non-tensor {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: tuple, state: Any) -> Any:
    # Tensor subclasses / tensors with a __dict__: only our own rebuild functions may be applied.
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
        raise UnsafeCheckpointError(f"torch._tensor._rebuild_from_type_v2 with {func!r}")
    return func(*args)


def _np_global(name: str) -> Any:
    core = getattr(np, "_core", None) or np.core
    return {"scalar": core.multiarray.scalar, "_reconstruct": core.multiarray._reconstruct,
            "dtype": np.dtype, "ndarray": np.ndarray}[name]


_SAFE: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "slice"): lambda: slice,
    ("builtins", "complex"): lambda: complex,
    ("copyreg", "_reconstructor"): lambda: _reconstructor,
    ("torch", "Size"): lambda: torch.Size,
    ("torch", "device"): lambda: torch.device,
    ("torch._utils", "_rebuild_tensor"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): lambda: _rebuild_from_type_v2,
    ("torch", "Tensor"): lambda: _record_class("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"): lambda: _record_class("torch.nn.parameter", "Parameter"),
    **{(mod, name): partial(_np_global, name)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")},
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy", "ndarray"): lambda: np.ndarray,
}


def _record_class(module: str, name: str) -> type[Record]:
    return type(name, (Record,), {"__module_name__": module, "__class_name__": name, "__module__": __name__})


def resolve_global(module: str, name: str) -> Any:
    """The object a pickle's ``module.name`` global may stand for, or ``UnsafeCheckpointError``."""
    if (module, name) in _SAFE:
        return _SAFE[(module, name)]()
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _DTYPES:
        return _DTYPES[name]
    if module.startswith(RECORD_MODULES) and name.isidentifier() and name[:1].isupper():
        return _record_class(module, name)
    raise UnsafeCheckpointError(f"refusing to unpickle global '{module}.{name}' (it could run code)")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come from :func:`resolve_global` and whose persistent ids name
    storages in ``storages`` (``key -> raw bytes reader``)."""

    def __init__(self, data: bytes, storages: Callable[[str], bytes]) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = storages
        self._cache: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's) spell Python 3 names the Python 2 way (__builtin__.set).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        return resolve_global(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {str(pid)[:60]}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"storage of unknown type {stype!r}")
        key = str(key)
        if key not in self._cache:
            raw = bytearray(self._read_storage(key))
            itemsize = torch.empty(0, dtype=stype.dtype).element_size()
            if len(raw) < int(numel) * itemsize and stype.dtype is not torch.uint8:
                raise CheckpointError(f"storage {key} is truncated")
            self._cache[key] = torch.frombuffer(raw, dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
        return self._cache[key]


def read_torch_zip(path: Path) -> Any:
    """Unpickle a ``torch.save`` zip checkpoint with :class:`RestrictedUnpickler`.

    Raises ``CheckpointError`` for a corrupt/truncated/foreign zip, ``UnsafeCheckpointError`` for a
    pickle that names a global outside the allow-list.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise CheckpointError(f"{path}: a zip, but not a PyTorch checkpoint (no <archive>/data.pkl)")
            prefix = pkls[0][: -len("data.pkl")]
            _check_sizes(zf, path)
            order = f"{prefix}byteorder"
            if order in names and zf.read(order).strip() not in (b"little", b""):
                raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
            return RestrictedUnpickler(zf.read(pkls[0]), lambda key: _read_member(zf, f"{prefix}data/{key}")).load()
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e})") from None
    except (pickle.UnpicklingError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint pickle ({type(e).__name__}: {e})") from None


def _check_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    # torch.save stores members uncompressed; a highly compressed member can only be a zip bomb.
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 100 * max(info.compress_size, 1024):
            raise CheckpointError(f"{path}: member {info.filename} expands {info.file_size} bytes from "
                                  f"{info.compress_size} (not a torch.save checkpoint)")


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except KeyError:
        raise CheckpointError(f"checkpoint is missing tensor data {name}") from None

