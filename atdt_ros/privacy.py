"""Nothing the project runs phones home, and nothing it caches can be planted by another user.

Imported first by both packages (``atdt_ros/__init__.py``), so every process of the project —
the node, replay, export, training, the benchmarks and the tests — has these settings before it
imports any library:

- **ONNX Runtime telemetry off.** Official ONNX Runtime builds (1.32 measured) send usage
  events to Microsoft through the 1DS SDK and keep an event store and a persistent device id
  under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``. ``ORT_DISABLE_TELEMETRY=1`` stops
  both, but only when it is set before the library initialises (its Privacy.md; setting it or
  calling the API afterwards leaves the start-up event and the device id). It is forced to
  ``1`` here, overriding any other value: a vehicle node never sends usage data.
- The other libraries the project loads were checked for the same behaviour in a private
  network namespace (docs/performance.md, section 4): torch, Lightning with its TensorBoard and
  CSV loggers, matplotlib and MuJoCo sent nothing and kept no identifier. torch.distributed's
  TCPStore does send reverse-DNS queries for 127.0.0.1; single-machine DDP therefore meets
  through a file (:class:`atdt_train.lit.LocalDDPStrategy`).

:func:`private_cache_dir` gives a directory only the current user can write, for compilers
that load what they find in their cache (torch.compile's inductor, Triton).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TELEMETRY_OFF: dict[str, str] = {"ORT_DISABLE_TELEMETRY": "1"}
"""Environment that turns library telemetry off; must be in place before the libraries load."""


def disable_telemetry() -> None:
    """Force :data:`TELEMETRY_OFF` into this process's environment (children inherit it)."""
    os.environ.update(TELEMETRY_OFF)


COMPILER_CACHES: dict[str, str] = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor",
                                   "TRITON_CACHE_DIR": "triton"}
"""Cache variables of the compilers torch.compile runs, and the private directory of each."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/atdt`` (default ``~/.cache/atdt``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atdt"


def point_compiler_caches() -> None:
    """Name private compiler cache directories in the environment (nothing is created here).

    Done at import, before torch can fill in its own default: inductor's first cache lookup
    writes ``/tmp/torchinductor_<user>`` into ``TORCHINDUCTOR_CACHE_DIR`` when it is unset.
    A value the user set is kept. :func:`compiler_cache_env` creates and checks them."""
    for var, name in COMPILER_CACHES.items():
        os.environ.setdefault(var, str(cache_root() / name))


class UnsafeCacheError(RuntimeError):
    """A cache directory another user could write to (code planted there would be run)."""


def private_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/atdt/<name>`` (default ``~/.cache/atdt/<name>``), made 0700 if new.

    Raises UnsafeCacheError when the directory, or one of its parents up to the cache root,
    belongs to another user or is writable by group or others: a compiler that reuses what it
    finds there would run code someone else put in.
    """
    root = cache_root()
    for directory in (root.parent, root, root / name):
        directory.mkdir(mode=0o700, exist_ok=True)
    path = root / name
    check_private(path, stop=root.parent)
    return path


def check_private(path: Path, stop: Path | None = None) -> None:
    """Raise UnsafeCacheError unless ``path`` (and its parents below ``stop``) is a directory of
    this user's that neither group nor others can write."""
    uid = os.geteuid()
    current = Path(path)
    while True:
        info = current.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeCacheError(f"cache directory {current} is a symbolic link; use a plain "
                                   f"directory of your own")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeCacheError(f"cache path {current} is not a directory")
        if info.st_uid != uid:
            raise UnsafeCacheError(f"cache directory {current} belongs to uid {info.st_uid}, not "
                                   f"to this user (uid {uid}): code planted there would be run")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeCacheError(f"cache directory {current} is writable by group or others "
                                   f"(mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it or "
                                   f"choose another")
        if stop is None or current == Path(stop) or current.parent == current:
            return
        current = current.parent


def compiler_cache_env() -> dict[str, str]:
    """Private cache directories for torch.compile (inductor) and Triton, set in the environment.

    ``~/.cache/atdt/torchinductor`` and ``~/.cache/atdt/triton`` replace inductor's default, a
    predictable name in the shared system temporary directory (``/tmp/torchinductor_<user>``)
    that another user can create first. A directory the user chose is kept but must pass
    :func:`check_private`.
    """
    import getpass
    import tempfile

    shared_default = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    chosen = {}
    for var, name in COMPILER_CACHES.items():
        given = os.environ.get(var)
        if given and Path(given) != shared_default and Path(given) != cache_root() / name:
            Path(given).mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private(Path(given))
            chosen[var] = given
        else:
            chosen[var] = str(private_cache_dir(name))
    os.environ.update(chosen)
    return chosen
