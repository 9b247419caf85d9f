"""Reading and writing ONNX files: one-line errors, atomic writes, models over 2 GiB.

Writes go to a temporary file beside the target and are renamed over it, so a crash never
leaves a half-written model; the new file gets the permissions ``open(path, "w")`` would give.
"""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from pathlib import Path

import onnx

from ..errors import ModelError, OnnxPruneError, first_line

# Protobuf cannot serialise a message of 2 GiB or more. Models at or above this size (1 MiB of
# headroom for the message framing) are written, and handed to onnxruntime, with their weights
# in an external data file. One limit for saving (model.files) and for sessions (runtime).
PROTO_LIMIT = (1 << 31) - (1 << 20)


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (with its external data) or raise a one-line ModelError."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory, expected an .onnx file")
    try:
        proto = onnx.load(str(p))
    except Exception as exc:  # protobuf raises several unrelated types for garbage input
        raise ModelError(f"{p}: not a readable ONNX model ({first_line(exc)})") from exc
    if not proto.graph.node:
        raise ModelError(f"{p}: not an ONNX model (no graph nodes; the file may be truncated or of another format)")
    return proto


def serialise(proto: onnx.ModelProto) -> bytes:
    return proto.SerializeToString(deterministic=True)


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write atomically: to a temporary file beside the target, then rename over it.

    Models above protobuf's 2 GiB limit are written with their weights in ``<name>.data``.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ModelError(f"cannot write {path}: directory {directory} does not exist")
    if proto.ByteSize() > PROTO_LIMIT:
        _save_external(proto, path)
        return
    write_bytes_atomic(path, serialise(proto))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it
    replaces, else ``0o666`` less the umask (``mkstemp`` alone would leave it private, 0600).
    """
    path = Path(path)
    mode = file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent or "."))
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            _chmod(f.fileno(), tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a partial file behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_mode(path: Path) -> int:
    """Permission bits for a file written at ``path``: the existing file's, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _chmod(fd: int, path: str, mode: int) -> None:
    if os.chmod in os.supports_fd:
        os.chmod(fd, mode)
    else:  # Windows: only the read-only bit exists
        os.chmod(path, mode)


def _save_external(proto: onnx.ModelProto, path: Path) -> None:
    data_name = path.name + ".data"
    mode = file_mode(path)
    with tempfile.TemporaryDirectory(dir=str(path.parent)) as tmpdir:
        tmp_model = Path(tmpdir) / path.name
        onnx.save_model(
            copy.deepcopy(proto), str(tmp_model), save_as_external_data=True,
            all_tensors_to_one_file=True, location=data_name, size_threshold=1024,
        )
        for written in (tmp_model, Path(tmpdir) / data_name):
            if written.exists():
                os.chmod(written, mode)
        os.replace(Path(tmpdir) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)


def check_writable(path: str | os.PathLike) -> None:
    """Fail before the (slow) report is built if ``path`` cannot be a file: it is a directory,
    its directory does not exist or is not one, or no file can be created in it (checked by
    creating and removing an empty temporary file there, which also catches read-only mounts
    and a root user on a filesystem that refuses new files)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OnnxPruneError(f"cannot write {path}: it is a directory")
    if parent.exists() and not parent.is_dir():
        raise OnnxPruneError(f"cannot write {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise OnnxPruneError(f"cannot write {path}: directory {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=str(parent))
    except OSError as exc:
        raise OnnxPruneError(f"cannot write {path}: cannot create a file in {parent} ({exc.strerror or exc})") from exc
    try:
        os.close(fd)
    finally:
        os.unlink(probe)


def write_text_atomic(path: Path, text: str) -> None:
    try:
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:  # e.g. replacing a file inside a read-only directory
        raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}") from exc
