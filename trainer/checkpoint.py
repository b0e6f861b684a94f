"""Training checkpoints (the whole state, checksummed, atomic, weights_only-loadable) and release exports.

A training checkpoint holds every network, every optimiser, the epoch / step position, the method's
own state (Generalist's step counter), every RNG state, the best validation score so far and the
resolved config: enough for `--resume` to continue a run bit-for-bit on the CPU.
A release export is the shipped model only: safetensors weights plus a JSON config.

On-disk layout of a checkpoint (format 2): the `torch.save` zip archive, then a 48-byte footer
    b"GTCKPT02" | payload length (uint64, big-endian) | SHA-256 of the payload (32 bytes).
torch's zip reader finds its central directory by scanning back from the end and tolerates trailing
bytes, so `torch.load(path, weights_only=True)` still reads the file directly; `load_checkpoint`
verifies the length and the digest first, so a file cut short or altered on disk is reported, never loaded.

Why the checksum lives in the same file rather than in a sidecar: the file and its digest are then
published by one rename, so no crash ordering can pair a new payload with an old digest or the reverse.
Each save goes: temporary file (payload + footer) -> fsync -> hard-link the current file to
`<stem>.prev.pt` -> rename the temporary file over the current one -> fsync the folder. A SIGKILL at
any of those moments leaves the current file (old or new, both complete) and at worst a stale
temporary file, which the next save removes. Resuming reads the newest version that verifies.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shlex
import signal
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .config import migrate_stored_config
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
# Format 1 (before checksums) is still read, unverified, so that older runs stay usable.
LEGACY_FORMAT_VERSIONS = (1,)
LAST = "last.pt"
BEST = "best.pt"

_FOOTER_MAGIC = b"GTCKPT02"
_FOOTER = struct.Struct(">8sQ32s")  # magic, payload length, SHA-256 digest
_ZIP_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"
_HASH_CHUNK = 1 << 20
_REQUIRED_KEYS = ("config", "networks", "optimizers", "position", "method_state", "rng")

# Test hook for the kill-and-resume tests: TRAINER_CRASH_AT="<point>[@<file name>]:<n>" makes the
# process SIGKILL itself the n-th time a save (of that file only, with @) reaches <point>. The points
# are the moments between the steps of a save; a crash at any of them must leave a resumable run.
CRASH_ENV_VAR = "TRAINER_CRASH_AT"
CRASH_POINTS = ("mid_payload", "before_footer", "before_keep_previous", "before_replace", "after_replace")
_crash_hits: dict[str, int] = {}


def _crash_point(point: str, path: Path) -> None:
    spec = os.environ.get(CRASH_ENV_VAR)
    if not spec:
        return
    target, _, count = spec.rpartition(":")
    name, _, file_name = target.partition("@")
    if name != point or (file_name and file_name != path.name):
        return
    _crash_hits[target] = _crash_hits.get(target, 0) + 1
    if _crash_hits[target] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def previous_version(path: Path) -> Path:
    """Where the version that `path` replaced is kept: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], keep_previous: Path | None = None) -> None:
    """Write through `write(file_obj)` into a temporary file in the same folder, fsync, then rename.

    A crash at any moment leaves either the previous file or the complete new one, never a torn file.
    With `keep_previous`, the file being replaced is first hard-linked there (see `_keep_previous`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600 whatever the umask; give it the mode open() would have, so that a
        # checkpoint or result is as readable by the group as any other file the user writes.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None:
            _crash_point("before_keep_previous", path)
            _keep_previous(path, Path(keep_previous))
            _crash_point("before_replace", path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _crash_point("after_replace", path)
    _fsync_folder(path.parent)


_umask_lock = threading.Lock()


def _current_umask() -> int:
    # POSIX offers no read-only query, so set and restore. The lock keeps our own writers apart; a file another
    # thread creates in the instant between gets the strict 077 mask, never a looser one.
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # The renames are durable only once the folder entry itself reaches the disk.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` the current `path` before `path` is replaced.

    A hard link keeps `path` in place the whole time, so there is no moment without a current file.
    A file that does not end like a complete checkpoint (cut short on disk) is not kept: it would
    push out a previous version that is good.
    """
    if not path.is_file() or not _looks_complete(path):
        return
    if previous.is_file() and os.path.samefile(path, previous):
        # Already kept (a save killed between keeping and renaming). rename(2) between two links of one
        # file does nothing, so going on would leave the temporary link behind.
        return
    link = previous.with_name(f".{previous.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:
        # No hard links on this file system: move it instead. Until the new file is renamed in there
        # is only `previous`, which resuming also reads, so a crash in that gap still resumes.
        os.replace(path, previous)
        return
    os.replace(link, previous)


def _looks_complete(path: Path) -> bool:
    """O(1) check of the end of the file: a format-2 footer of the right length, or a zip end record."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size >= _FOOTER.size:
                f.seek(size - _FOOTER.size)
                magic, length, _ = _FOOTER.unpack(f.read(_FOOTER.size))
                if magic == _FOOTER_MAGIC:
                    return length == size - _FOOTER.size
            # A format-1 file is a bare zip archive; an empty archive comment puts its end record last.
            if size >= 22:
                f.seek(size - 22)
                return f.read(4) == _ZIP_END_OF_CENTRAL_DIRECTORY
    except OSError:
        return False
    return False


class _HashingWriter:
    """File-object wrapper that digests and counts what `torch.save` writes through it."""

    def __init__(self, f: IO[bytes], path: Path):
        self._f = f
        self._path = path
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._writes = 0
        # torch.save's zip writer turns an exception of write() into a RuntimeError without its errno ("unexpected
        # pos ..."); the original is kept here so that a full disk is reported as one.
        self.os_error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            written = self._f.write(data)
        except OSError as exc:
            self.os_error = exc
            raise
        self.sha256.update(data)
        self.size += len(data)
        self._writes += 1
        if self._writes == 1:
            _crash_point("mid_payload", self._path)
        return written

    def flush(self) -> None:
        self._f.flush()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` as a checksummed checkpoint; the version it replaces becomes `<stem>.prev.pt`.

    A write that fails (disk full, quota, I/O error) raises CheckpointError naming the file and saying where
    the previous complete version is, after checking that it still verifies.
    """
    path = Path(path)
    _remove_stale_temporaries(path)
    payload = {"format_version": FORMAT_VERSION, **state}

    def write(f: IO[bytes]) -> None:
        hashing = _HashingWriter(f, path)
        try:
            torch.save(payload, hashing)
        except Exception:
            if hashing.os_error is not None:
                raise hashing.os_error from None
            raise
        _crash_point("before_footer", path)
        f.write(_FOOTER.pack(_FOOTER_MAGIC, hashing.size, hashing.sha256.digest()))

    try:
        atomic_write(path, write, keep_previous=previous_version(path))
    except OSError as exc:
        problem = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc)).lower()
        raise CheckpointError(f"checkpoint {path}: {problem} while writing it (the partial file was removed); "
                              f"{_previous_checkpoint_status(path)}") from None


def _previous_checkpoint_status(path: Path) -> str:
    """Where the version a failed save would have replaced is, and whether it still verifies."""
    reasons = []
    for candidate in (path, previous_version(path)):
        if not candidate.is_file():
            continue
        try:
            position = load_checkpoint(candidate)["position"]
        except CheckpointError as exc:
            reasons.append(str(exc))
            continue
        return (f"the previous checkpoint {candidate} (epoch {position['epoch']}, batch {position['batch']}, "
                f"step {position['global_step']}) is intact")
    if reasons:
        return "no intact earlier version is left (" + "; ".join(reasons) + ")"
    return "no earlier version of it was saved"


def _remove_stale_temporaries(path: Path) -> None:
    # Left by a save that was killed before its renames; one process writes a run's checkpoints.
    if path.parent.is_dir():
        patterns = (f".{path.name}.*.tmp", f".{previous_version(path).name}.*.link")
        for stale in [p for pattern in patterns for p in path.parent.glob(pattern)]:
            stale.unlink(missing_ok=True)


def verify_checkpoint_file(path: str | Path) -> None:
    """Raise CheckpointError naming `path` unless it is a complete checkpoint whose checksum matches."""
    path = Path(path)
    with _open_checkpoint(path) as f:
        _verify_payload(f, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify the checksum, then load with weights_only=True (no arbitrary code runs).

    Errors name the file and the problem, and point at the previous version when one is there.
    """
    path = Path(path)
    try:
        with _open_checkpoint(path) as f:
            verified = _verify_payload(f, path)
            f.seek(0)
            state = _torch_load(f, path)
        return _check_contents(state, path, verified)
    except CheckpointError as exc:
        previous = previous_version(path)
        if path.name != previous.name and previous.is_file():
            raise CheckpointError(f"{exc}; the previous version {previous} is still there") from None
        raise


def load_newest_valid(path: str | Path, set_aside_rejected: bool = False) -> tuple[dict[str, Any], Path]:
    """The state of `path` if it verifies, else of its previous version; returns (state, file used).

    Logs (a warning) which file was used and why the newer one was rejected. With `set_aside_rejected` (resuming
    a run), a rejected file is renamed to `<name>.rejected`: kept for inspection, and out of the way of
    the next save, which would otherwise keep it as the previous version over the good one.
    """
    path = Path(path)
    candidates = [path, previous_version(path)]
    reasons: list[str] = []
    rejected: list[Path] = []
    for candidate in candidates:
        if not candidate.exists():
            reasons.append(f"{candidate}: not found")
            continue
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as exc:
            reasons.append(str(exc))
            rejected.append(candidate)
            continue
        # Only once a good version is found: with none, the files stay where they are for another try.
        for bad in rejected if set_aside_rejected else []:
            os.replace(bad, bad.with_name(bad.name + ".rejected"))
            reasons.append(f"moved {bad.name} to {bad.name}.rejected")
        if candidate != path:
            log.warning("checkpoint %s rejected, using the previous version %s: %s", path, candidate,
                        "; ".join(reasons))
        return state, candidate
    raise CheckpointError(f"no usable checkpoint among {[str(c) for c in candidates]}: " + "; ".join(reasons))


def load_resume_state(run_dir: str | Path, set_aside_rejected: bool = False) -> tuple[dict[str, Any], Path]:
    """`load_newest_valid` of RUN/last.pt, whose error, when there is nothing to resume, says what to do instead."""
    run_dir = Path(run_dir)
    try:
        return load_newest_valid(run_dir / LAST, set_aside_rejected)
    except CheckpointError as exc:
        advice = _no_resume_advice(run_dir)
        raise CheckpointError(f"{exc}; {advice}" if advice else str(exc)) from None


def _no_resume_advice(run_dir: Path) -> str:
    last = run_dir / LAST
    if not run_dir.is_dir():
        return f"the run folder {run_dir} does not exist"
    for best in (run_dir / BEST, previous_version(run_dir / BEST)):
        try:
            position = load_checkpoint(best)["position"]
        except CheckpointError:
            continue
        # best.pt holds the whole training state of the end of its epoch, like last.pt did then.
        return (f"but {best} is valid (saved after epoch {position['epoch'] - 1}, step {position['global_step']}): "
                f"to continue from it, copy it over {LAST} (cp {shlex.quote(str(best))} {shlex.quote(str(last))}) "
                f"and resume; the epochs after it are trained again")
    if last.exists() or previous_version(last).exists():
        return ""
    config = run_dir / "config.yaml"
    if config.is_file():
        return (f"nothing was saved in {run_dir} yet (the run stopped before its first checkpoint); start it afresh "
                f"there with: python -m generalist_trainer train --config {shlex.quote(str(config))}")
    return f"{run_dir} holds no run (no config.yaml either)"


class _open_checkpoint:
    """Open for reading, turning a missing or unreadable file into a CheckpointError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> IO[bytes]:
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint {self.path}: not found")
        try:
            self.f = self.path.open("rb")
        except OSError as exc:
            raise CheckpointError(f"checkpoint {self.path}: cannot be opened ({exc.strerror or exc})") from None
        return self.f

    def __exit__(self, *exc_info: object) -> None:
        self.f.close()


def _verify_payload(f: IO[bytes], path: Path) -> bool:
    """True when the footer's length and SHA-256 match; False for a file without footer (format 1).

    Whether a file without footer really is a format-1 checkpoint (and not a format-2 one cut short
    exactly at its footer) is decided from its format_version once loaded.
    """
    size = os.fstat(f.fileno()).st_size
    if size < _FOOTER.size:
        raise CheckpointError(f"checkpoint {path}: truncated: {size} bytes")
    f.seek(size - _FOOTER.size)
    magic, length, digest = _FOOTER.unpack(f.read(_FOOTER.size))
    if magic != _FOOTER_MAGIC:
        return False
    if length != size - _FOOTER.size:
        raise CheckpointError(f"checkpoint {path}: the footer announces {length} bytes of payload but "
                              f"{size - _FOOTER.size} precede it (file cut short or appended to)")
    f.seek(0)
    sha256 = hashlib.sha256()
    remaining = length
    while remaining:
        chunk = f.read(min(_HASH_CHUNK, remaining))
        if not chunk:
            raise CheckpointError(f"checkpoint {path}: truncated while reading")
        sha256.update(chunk)
        remaining -= len(chunk)
    if sha256.digest() != digest:
        raise CheckpointError(f"checkpoint {path}: SHA-256 mismatch (found {sha256.hexdigest()[:16]}..., "
                              f"the footer records {digest.hex()[:16]}...); the file is corrupt")
    return True


def _torch_load(f: IO[bytes], path: Path) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path}: cannot be read as a training checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _check_contents(state: Any, path: Path, verified: bool) -> dict[str, Any]:
    version = state.get("format_version") if isinstance(state, dict) else type(state).__name__
    known = (FORMAT_VERSION, *LEGACY_FORMAT_VERSIONS)
    if version not in known:
        raise CheckpointError(f"checkpoint {path}: format_version {version!r}; expected one of {known}")
    if version == FORMAT_VERSION and not verified:
        raise CheckpointError(f"checkpoint {path}: format {FORMAT_VERSION} without its checksum footer; "
                              "the file was cut short")
    for key in _REQUIRED_KEYS:
        if key not in state:
            raise CheckpointError(f"checkpoint {path}: missing the '{key}' entry")
    if isinstance(state["config"], dict):
        # Every reader of a checkpoint's config (resume, eval, export, load_model) comes through here.
        state["config"], renamed = migrate_stored_config(state["config"])
        if renamed:
            log.info("checkpoint %s: its config uses the old key(s) %s; read under their new names", path,
                     ", ".join(renamed))
    return state


def check_output_file(path: str | Path, what: str) -> None:
    """Raise ConfigError naming `what` (e.g. "eval --out") unless `path` can be written as a file.

    For commands that write their result only at the end: they call this before the work starts.
    """
    path = Path(path)
    if path.is_dir():
        raise _output_error(what, path, "is a folder; expected a file path")
    _check_folder_can_be_made(path.parent, what, path)


def check_output_folder(path: str | Path, what: str) -> None:
    """Raise ConfigError naming `what` (e.g. "export --out") unless `path` is or can be made a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise _output_error(what, path, "is a file, not a folder")
    _check_folder_can_be_made(path, what, path)


def _check_folder_can_be_made(folder: Path, what: str, path: Path) -> None:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _output_error(what, path, f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _output_error(what, path, f"cannot write in {existing} (permission denied)")


def _output_error(what: str, path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{what} {path}: {problem}")


def resolve_checkpoint(run_or_file: str | Path, which: str = "best") -> Path:
    """A checkpoint file, or a run folder plus 'best' / 'last' (best falls back to last if absent).

    A missing file is replaced by its previous version when only that one is there (a save that fell
    back to renaming, on a file system without hard links, and was killed before its final rename).
    """
    p = Path(run_or_file)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: neither a checkpoint file nor a run folder")
    if which not in ("best", "last"):
        raise CheckpointError(f"checkpoint choice {which!r}: expected 'best' or 'last'")
    names = (BEST, LAST) if which == "best" else (LAST,)
    for name in names:
        for candidate in (p / name, previous_version(p / name)):
            if candidate.is_file():
                return candidate
    raise CheckpointError(f"run folder {p}: no {names[0]} (has training been run there?)")


def export_safetensors(model: nn.Module, out_dir: Path, model_config: dict[str, Any]) -> Path:
    """Write `model.safetensors` (model weights only) and `config.json` beside it; returns the weights path."""
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in unwrap(model).state_dict().items()}
    weights = out_dir / "model.safetensors"
    # Serialised in memory and published by atomic_write, which gives the file the mode a plain open() would
    # (safetensors' save_file creates it 0600).
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(weights, lambda f: f.write(data))
    atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(model_config, indent=2).encode()))
    return weights


def load_export(export_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an `export_safetensors` folder: the model in eval mode, returning (N, num_classes) logits.

    A DUCAT export (config.json has `class_fold`) comes back as `FoldedLogits` over the 2C-logit network,
    so it returns the same C logits that were evaluated before the export.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model_loading import model_from_metadata

    folder = Path(export_dir)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for p in (config_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"export {folder}: {p.name} not found")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"export {config_path}: not a model config this trainer can rebuild "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"export {config_path}: not a model config this trainer can rebuild (expected a JSON "
                              f"object, found {type(meta).__name__})")
    model = model_from_metadata(meta, f"export {config_path}")
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except (RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"export {weights_path}: weights do not fit the model in {config_path.name} "
                              f"({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()
