"""Lazy tensor readers: file headers give names/shapes/dtypes; tensors are read one at a time.

Both readers hold only paths when pickled, so a reader can be sent to another process and
re-opens its files there on first use.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from safetensors import SafetensorError, safe_open

from hf_spectral._lazy import LazyModule
from hf_spectral.errors import SpectralError
from hf_spectral.sources.layout import index_weight_map
from hf_spectral.sources.types import ReaderContext
from hf_spectral.tensor_info import DTYPE_BYTES, NUMPY_DTYPES, TensorInfo, dtype_code

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

def _bad_file(path: Path, error: Exception) -> SpectralError:
    # the library's first sentence, capped: the message must stay one short line
    detail = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0][:160]
    return SpectralError(f"{path} is truncated or corrupt ({detail}): re-download or re-save it")


_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """Names, shapes and dtypes of a ``.safetensors`` file in data order, from its header alone.

    Reads the 8-byte length and the JSON header (a few kB) and nothing else: planning and
    ``--dry-run`` never touch tensor data. Checks what ``safe_open`` checks (length, JSON, offsets
    that tile the data exactly and match each shape), so a truncated or corrupt file fails here.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("header too small")
            length = int.from_bytes(prefix, "little")
            if length > _MAX_HEADER_BYTES or 8 + length > size:
                raise ValueError(f"invalid header length {length}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as e:
        raise _bad_file(path, e) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_file(path, e) from e
    if not isinstance(header, dict):
        raise _bad_file(path, ValueError("header is not a JSON object"))
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise _bad_file(path, ValueError(f"bad header entry for {name}")) from e
        info = TensorInfo(name, shape, dtype)
        if dtype not in DTYPE_BYTES or end - begin != info.nbytes:
            raise _bad_file(path, ValueError(f"tensor {name}: offsets do not match its {dtype} shape {list(shape)}"))
        entries.append((begin, end, info))
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, info in entries:
        if begin != position:
            raise _bad_file(path, ValueError(f"tensor {info.name}: data offsets do not tile the file"))
        position = end
    if 8 + length + position != size:
        raise _bad_file(path, ValueError(f"the header describes {8 + length + position} bytes, the file has {size}"))
    return [info for _, _, info in entries]


def _open_for_torch(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as e:
        raise _bad_file(path, e) from e


class SafetensorsReader(ReaderContext):
    """Reads one model stored as one or more ``.safetensors`` files.

    Headers of every file are parsed and checked when the reader is made (``read_safetensors_header``:
    a truncated or corrupt file fails here, not during the SVDs, and no tensor data is touched); tensors
    are read with ``safe_open`` (mmap, zero-copy) from handles opened on first use and kept until ``close()``.
    """

    def __init__(self, files: Iterable[Path | str], index_json: Path | str | None = None) -> None:
        self.files: list[Path] = [Path(f) for f in files]
        self.index_json: Path | None = Path(index_json) if index_json is not None else None
        if not self.files:
            raise SpectralError(f"no safetensors files given{f' by {self.index_json}' if self.index_json else ''}")
        self._handles: dict[int, Any] = {}
        self._maps: dict[int, np.memmap] = {}
        self._lock = threading.Lock()
        self._infos, self._where = self._scan()
        self._by_name = {info.name: info for info in self._infos}
        self._offsets = self._data_offsets()

    @classmethod
    def from_index(cls, index_json: Path | str) -> "SafetensorsReader":
        """A reader over the shards a ``*.safetensors.index*.json`` names (missing shards fail here)."""
        from hf_spectral.sources.layout import index_shards

        return cls(index_shards(Path(index_json)), index_json)

    def _scan(self) -> tuple[list[TensorInfo], dict[str, int]]:
        infos: list[TensorInfo] = []
        where: dict[str, int] = {}
        for i, path in enumerate(self.files):
            if not path.is_file():
                raise SpectralError(f"no such file: {path}: re-download the model")
            for info in read_safetensors_header(path):
                if info.name in where:
                    raise SpectralError(
                        f"tensor {info.name} is stored in both {self.files[where[info.name]].name} and {path.name} "
                        f"({path.parent}): re-save the model"
                    )
                where[info.name] = i
                infos.append(info)
        if self.index_json is not None:
            self._check_index(where)
        return infos, where

    def _check_index(self, where: dict[str, int]) -> None:
        # An index that disagrees with the shards means a partial or mixed download.
        for name, shard in index_weight_map(self.index_json).items():
            if name not in where:
                raise SpectralError(
                    f"{self.index_json} lists tensor {name} in {shard}, but no shard holds it: re-download the model"
                )
            if self.files[where[name]].name != Path(shard).name:
                raise SpectralError(
                    f"{self.index_json} lists tensor {name} in {shard}, but it is in {self.files[where[name]].name}: "
                    "re-download the model"
                )

    def _data_offsets(self) -> dict[str, tuple[int, int]]:
        # The header check proved that each file's tensors tile its data in header order and that the
        # data ends the file: byte ranges follow from the sizes alone.
        offsets: dict[str, tuple[int, int]] = {}
        ends = {i: path.stat().st_size for i, path in enumerate(self.files)}
        for info in reversed(self._infos):
            i = self._where[info.name]
            offsets[info.name] = (ends[i] - info.nbytes, ends[i])
            ends[i] -= info.nbytes
        return offsets

    def tensors(self) -> list[TensorInfo]:
        """Names, shapes and dtypes of all tensors, from headers only, in file then storage order."""
        return list(self._infos)

    def can_read_array(self, name: str) -> bool:
        """Whether :meth:`read_array` reads ``name`` (a float dtype numpy holds: F64, F32, F16, BF16)."""
        info = self._by_name.get(name)
        return info is not None and info.dtype in NUMPY_DTYPES

    def file_of(self, name: str) -> Path:
        """The file that stores ``name``."""
        return self.files[self._file_index(name)]

    def _file_index(self, name: str) -> int:
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {', '.join(str(f) for f in self.files)}") from None

    def read(self, name: str) -> torch.Tensor:
        """One tensor on the CPU, memory-mapped from its file (no copy)."""
        return self._opened(self._handles, self._file_index(name), _open_for_torch).get_tensor(name)

    def read_array(self, name: str) -> np.ndarray:
        """One tensor as a numpy array memory-mapped from its file (no copy, no torch import; BF16 is
        widened to float32, exactly). For the engine's numpy backend; ``can_read_array`` says which."""
        mapped = self._opened(self._maps, self._file_index(name), lambda path: np.memmap(path, np.uint8, "r"))
        info = self._by_name[name]
        begin, end = self._offsets[name]
        array = mapped[begin:end].view(NUMPY_DTYPES[info.dtype]).reshape(info.shape)
        if info.dtype == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def _opened(self, opened: dict[int, Any], i: int, open_file: Callable[[Path], Any]) -> Any:
        """File ``i`` opened by ``open_file``, once: ``opened`` keeps it (checked again under the lock,
        since the engine's read-ahead thread reads too)."""
        handle = opened.get(i)
        if handle is None:
            with self._lock:
                handle = opened.get(i)
                if handle is None:
                    handle = opened[i] = open_file(self.files[i])
        return handle

    def close(self) -> None:
        """Release the file mappings; the reader re-opens files if used again."""
        with self._lock:
            self._maps = {}  # a mapping closes when the last array viewing it is gone
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            try:
                handle.__exit__(None, None, None)
            except Exception:  # already closed: nothing to release
                pass

    def __getstate__(self) -> dict[str, Any]:
        # Only paths and header facts travel; handles and locks are per process.
        return {"files": self.files, "index_json": self.index_json, "_infos": self._infos, "_where": self._where,
                "_offsets": self._offsets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handles = {}
        self._maps = {}
        self._by_name = {info.name: info for info in self._infos}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SafetensorsReader({len(self.files)} file(s) in {self.files[0].parent}, {len(self._infos)} tensors)"


# Keys under which whole training checkpoints (Lightning, hand-written loops) keep the weights.
_NESTED_KEYS = ("state_dict", "model", "module")


class TorchBinReader(ReaderContext):
    """Reads one model stored as one or more ``torch.save`` files (``pytorch_model.bin`` and shards).

    Files are loaded on first use with ``torch.load(mmap=True, weights_only=True)``: the tensors
    stay on disk until read (zero-copy). Files in the pre-1.6 non-zip format cannot be mapped and
    are loaded whole into memory instead. Non-tensor entries are ignored; a file whose top level
    holds no tensors but a ``state_dict`` / ``model`` / ``module`` dict of them is unwrapped.
    A corrupt file fails at ``tensors()`` (planning time, before any SVD).
    """

    # torch.save keeps tied weights as one storage under several names (safetensors cannot).
    shares_storage = True

    def __init__(self, files: Iterable[Path | str], index_json: Path | str | None = None) -> None:
        self.files: list[Path] = [Path(f) for f in files]
        self.index_json: Path | None = Path(index_json) if index_json is not None else None
        if not self.files:
            raise SpectralError(f"no .bin files given{f' by {self.index_json}' if self.index_json else ''}")
        for path in self.files:
            if not path.is_file():
                raise SpectralError(f"no such file: {path}: re-download the model")
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._where: dict[str, int] | None = None

    @classmethod
    def from_index(cls, index_json: Path | str) -> "TorchBinReader":
        """A reader over the shards a ``pytorch_model.bin.index*.json`` names."""
        from hf_spectral.sources.layout import index_shards

        return cls(index_shards(Path(index_json)), index_json)

    def _load(self, i: int) -> dict[str, torch.Tensor]:
        state = self._loaded.get(i)
        if state is not None:
            return state
        with self._lock:
            state = self._loaded.get(i)
            if state is None:
                state = _load_state_dict(self.files[i])
                self._loaded[i] = state
        return state

    def _index(self) -> dict[str, int]:
        if self._where is None:
            where: dict[str, int] = {}
            for i, path in enumerate(self.files):
                for name in self._load(i):
                    if name in where:
                        raise SpectralError(
                            f"tensor {name} is stored in both {self.files[where[name]].name} and {path.name} "
                            f"({path.parent}): re-save the model"
                        )
                    where[name] = i
            if self.index_json is not None:
                for name, shard in index_weight_map(self.index_json).items():
                    if name not in where:
                        raise SpectralError(
                            f"{self.index_json} lists tensor {name} in {shard}, but no shard holds it: "
                            "re-download the model"
                        )
            self._where = where
        return self._where

    def tensors(self) -> list[TensorInfo]:
        """Names, shapes and dtypes (as safetensors codes) of all tensors, in file then saved order."""
        out = []
        for name, i in self._index().items():
            t = self._load(i)[name]
            out.append(TensorInfo(name, tuple(int(d) for d in t.shape), dtype_code(t.dtype)))
        return out

    def read(self, name: str) -> torch.Tensor:
        """One tensor on the CPU (memory-mapped, not copied)."""
        where = self._index()
        if name not in where:
            raise KeyError(f"no tensor {name!r} in {', '.join(str(f) for f in self.files)}")
        return self._load(where[name])[name]

    def close(self) -> None:
        """Drop the loaded (mapped) state dicts; the reader re-loads files if used again."""
        with self._lock:
            self._loaded = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "index_json": self.index_json}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaded = {}
        self._lock = threading.Lock()
        self._where = None

    def __repr__(self) -> str:
        return f"TorchBinReader({len(self.files)} file(s) in {self.files[0].parent})"


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            # Pre-1.6 (non-zip) format: cannot be mapped, so it is read whole into memory.
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        if "weights only load failed" in str(e).lower():
            raise SpectralError(
                f"{path} holds pickled Python objects besides tensors, which are not loaded for safety: "
                "re-save its state dict with safetensors.torch.save_file"
            ) from e
        raise _bad_file(path, e) from e
    state = _tensors_of(obj)
    if state is None:
        raise SpectralError(f"{path} holds no tensors (a {type(obj).__name__}): expected a saved state dict")
    return state


def _tensors_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict):
        return None
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in _NESTED_KEYS:
        inner = _tensors_of(obj.get(key))
        if inner:
            return inner
    return None
