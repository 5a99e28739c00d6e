"""Loading and saving model weights: Meta release directories and our standard model directory.

Standard directory (what `wmtp model convert-meta` and `wmtp model micro` write):

    <name>/configs/params.json            ModelArgs fields
    <name>/safetensors/model.safetensors  weights, Meta's key names, no complex tensors
    <name>/tokenizer/tokenizer.model      SentencePiece model (optional for converted fixtures)
    <name>/metadata.json                  dtype, source, SHA-256 and size of every file

Meta release directory: `consolidated.pth` + `params.json` (+ `tokenizer.model`).
Every mismatch between params and weights is an error naming the key; nothing is loaded with
`strict=False`. A standard directory's files are checked against metadata.json before loading: the
sizes always (cheap), the SHA-256 hashes with `verify=True` (`wmtp model verify`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wmtp.common.files import atomic_dir
from wmtp.errors import CheckpointError
from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer

PARAMS_FILE = "configs/params.json"
WEIGHTS_FILE = "safetensors/model.safetensors"
TOKENIZER_FILE = "tokenizer/tokenizer.model"
METADATA_FILE = "metadata.json"
META_WEIGHTS = "consolidated.pth"
META_PARAMS = "params.json"
# Keys some Meta checkpoints carry that are derived from params, not learned.
DERIVED_KEYS = frozenset({"rope.freqs", "freqs_cis"})

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def parse_dtype(dtype: str | torch.dtype | None) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def is_meta_dir(path: Path) -> bool:
    return (path / META_WEIGHTS).is_file() or (path / META_PARAMS).is_file()


def is_standard_dir(path: Path) -> bool:
    return (path / PARAMS_FILE).is_file() or (path / WEIGHTS_FILE).is_file()


def read_meta_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Meta's consolidated.pth as a real-valued state dict (derived keys dropped)."""
    weights = path / META_WEIGHTS
    if not weights.is_file():
        shards = sorted(path.glob("consolidated.*.pth"))
        if shards:
            raise CheckpointError(
                f"{path}: found {len(shards)} model-parallel shard(s) ({shards[0].name}, …); "
                f"expected a single {META_WEIGHTS}"
            )
        raise CheckpointError(f"{weights}: not found (a Meta release directory needs {META_WEIGHTS})")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{weights}: cannot be read as a PyTorch checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: expected a state dict, found {type(state).__name__}")
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_complex():
            raise CheckpointError(f"{weights}: key {key!r} is a complex tensor; expected real weights")
    return {k: v for k, v in state.items() if k not in DERIVED_KEYS}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from None


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise one clear error if `state` does not match `model` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(
                f"unexpected key {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            )
        raise CheckpointError(f"{source}: {'; '.join(parts)} — do params.json and the weights belong together?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, params.json implies {tuple(tensor.shape)}"
            )


def build_from_state(
    args: ModelArgs, state: dict[str, torch.Tensor], source: str, device, dtype: Optional[torch.dtype]
) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    check_state_dict(model, state, source)
    if dtype is None:
        dtype = next(iter(state.values())).dtype
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.rebuild_rope_tables(device)
    return model


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    max_seq_len: Optional[int] = None,
    verify: bool = False,
) -> Transformer:
    """Load a Meta release directory or a standard model directory.

    `dtype=None` keeps the stored dtype. `max_seq_len` overrides the RoPE table length.

    A standard directory is checked against its metadata.json first: every listed file must exist with
    the recorded size (always; a truncated or replaced file is one error naming it), and with
    `verify=True` also with the recorded SHA-256 (reads every byte once; catches a flipped byte).
    A standard directory without metadata.json (e.g. written by hand) is accepted with a `UserWarning`
    saying nothing could be checked; with `verify=True` it is an error, and so is a Meta release
    directory (it records no hashes; convert it with `wmtp model convert-meta` to get them).
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model directory not found")
    if is_standard_dir(path):
        check_against_metadata(path, hashes=verify)
        args = ModelArgs.from_json_file(path / PARAMS_FILE, max_seq_len=max_seq_len)
        weights = path / WEIGHTS_FILE
        return build_from_state(args, read_safetensors(weights), str(weights), device, dtype)
    if is_meta_dir(path):
        if verify:
            raise CheckpointError(
                f"{path}: a Meta release directory records no SHA-256 to verify against; "
                "convert it with `wmtp model convert-meta` first"
            )
        args = ModelArgs.from_json_file(path / META_PARAMS, max_seq_len=max_seq_len)
        return build_from_state(args, read_meta_state_dict(path), str(path / META_WEIGHTS), device, dtype)
    raise CheckpointError(
        f"{path}: neither a standard model directory ({PARAMS_FILE} + {WEIGHTS_FILE}) "
        f"nor a Meta release directory ({META_PARAMS} + {META_WEIGHTS})"
    )


def read_metadata(path: Path) -> Optional[dict]:
    """metadata.json of a standard directory, or None when there is none."""
    meta_path = path / METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("files", {}), dict):
        raise CheckpointError(f"{meta_path}: expected an object with a 'files' mapping")
    return metadata


def check_against_metadata(path: Path, hashes: bool) -> None:
    """Every file metadata.json lists: present, recorded size, and (with `hashes`) recorded SHA-256."""
    metadata = read_metadata(path)
    if metadata is None:
        if hashes:
            raise CheckpointError(f"{path / METADATA_FILE}: not found, so nothing can be verified")
        warnings.warn(f"{path}: no {METADATA_FILE}; file sizes and hashes not checked", UserWarning, stacklevel=3)
        return
    for rel, info in metadata.get("files", {}).items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in metadata.json but missing")
        size = file.stat().st_size
        if size != info.get("size"):
            raise CheckpointError(
                f"{file}: {size} bytes, metadata.json records {info.get('size')} (corrupt or modified)"
            )
        if hashes:
            digest = sha256_file(file)
            if digest != info.get("sha256"):
                raise CheckpointError(
                    f"{file}: SHA-256 {digest} does not match metadata.json's {info.get('sha256')} "
                    "(corrupt or modified)"
                )


def populate_model_dir(
    target: Path,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    source: str,
    tokenizer_model: Optional[Path] = None,
    extra_metadata: Optional[dict] = None,
) -> None:
    """Write the standard layout into the existing, empty directory `target` (not atomic by itself)."""
    (target / "configs").mkdir()
    (target / "safetensors").mkdir()
    (target / PARAMS_FILE).write_text(json.dumps(args.to_params(), indent=2) + "\n")
    contiguous = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(contiguous, target / WEIGHTS_FILE, metadata={"format": "pt"})
    if tokenizer_model is not None:
        (target / "tokenizer").mkdir()
        shutil.copyfile(tokenizer_model, target / TOKENIZER_FILE)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in contiguous.values()})
    files = {
        str(p.relative_to(target)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(target.rglob("*"))
        if p.is_file()
    }
    metadata = {
        "format": "wmtp-model-v2",
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_parameters": sum(v.numel() for v in contiguous.values()),
        "params": args.to_params(),
        "files": files,
        **(extra_metadata or {}),
    }
    (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def write_model_dir(
    dest: str | os.PathLike,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    source: str,
    tokenizer_model: Optional[Path] = None,
    extra_metadata: Optional[dict] = None,
) -> Path:
    """Write a standard model directory atomically (temp dir, then rename); refuses to overwrite."""
    dest = Path(dest)
    if dest.exists():
        raise CheckpointError(f"{dest}: already exists; choose a new destination")
    with atomic_dir(dest) as tmp:
        populate_model_dir(tmp, args, state, source, tokenizer_model, extra_metadata)
    return dest


def save_model(model: Transformer, dest, source: str, tokenizer_model: Optional[Path] = None, **kw) -> Path:
    """Save a model as a standard directory."""
    return write_model_dir(dest, model.args, model.state_dict(), source, tokenizer_model, kw or None)


def find_meta_tokenizer(src: Path) -> Optional[Path]:
    """The tokenizer.model Meta ships next to a release (in it, or in its parent as for Llama 2/3 downloads)."""
    for candidate in (src / "tokenizer.model", src.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def convert_meta(src: str | os.PathLike, dest: str | os.PathLike, tokenizer_model: Optional[Path] = None) -> Path:
    """Convert a Meta release directory into a standard model directory (weights validated first).

    `tokenizer_model=None` takes SRC/tokenizer.model or SRC/../tokenizer.model when there is one; with
    neither, the directory is written without tokenizer/ (the CLI says so).
    """
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src}: Meta release directory not found")
    if tokenizer_model is not None and not Path(tokenizer_model).is_file():
        raise CheckpointError(f"{tokenizer_model}: tokenizer file not found")
    args = ModelArgs.from_json_file(src / META_PARAMS)
    state = read_meta_state_dict(src)
    with torch.device("meta"):
        check_state_dict(Transformer(args), state, str(src / META_WEIGHTS))
    if tokenizer_model is None:
        tokenizer_model = find_meta_tokenizer(src)
    source = f"meta:{src.resolve()} (sha256 {sha256_file(src / META_WEIGHTS)})"
    return write_model_dir(dest, args, state, source, tokenizer_model)


def verify_model_dir(path: str | os.PathLike) -> None:
    """Check every file listed in metadata.json against its recorded size and SHA-256."""
    check_against_metadata(Path(path), hashes=True)
