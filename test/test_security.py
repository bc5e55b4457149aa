"""Nothing phones home, no model file runs code, nothing from a message is echoed raw.

Every crafted file here carries a live payload (:class:`chain_helpers.CodeOnLoad`): the first
test shows that loading it the old way does run it, so the refusals below are refusals of code
that would have run. Each refusal names the file and the reason, and the marker the payload
would create stays absent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import chain_helpers
from atdt_ros.artifact import ArtifactError, load_metadata, sha256_file
from atdt_ros.backends import BackendUnavailable, EngineCache, engine_key, open_backend
from test_node import _params_file, _run_to_exit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return chain_helpers.exported_chain(tmp_path_factory)


def _copy(chain: Path, tmp: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(chain, tmp / name))


def _edit_metadata(directory: Path, edit) -> None:
    raw = json.loads((directory / "metadata.json").read_text())
    edit(raw)
    (directory / "metadata.json").write_text(json.dumps(raw))


def _crafted_artifact(chain: Path, tmp: Path, marker: Path, rehash: bool) -> Path:
    """The chain with a code-running chain.pt2; ``rehash``: metadata.json names its hash too
    (a wholly crafted artifact), else the file was swapped after export."""
    out = _copy(chain, tmp, "crafted")
    chain_helpers.crafted_pt2(chain / "chain.pt2", out / "chain.pt2", marker)
    if rehash:
        _edit_metadata(out, lambda r: r["files"].update({"chain.pt2": sha256_file(out / "chain.pt2")}))
    return out


# ---- telemetry ---------------------------------------------------------------------------

def test_an_onnxruntime_session_leaves_no_event_store_or_device_id(chain, tmp_path) -> None:
    """ONNX Runtime's telemetry writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,
    onnxruntime.db} at the first session unless ORT_DISABLE_TELEMETRY=1 was set before it
    loaded. The project sets it itself: the variable is removed from the child's environment."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    script = (
        "import numpy as np\n"
        "from atdt_ros.backends import open_backend\n"          # the node's way
        f"b = open_backend({str(chain)!r}, 'onnxruntime')\n"
        "out = b.infer(np.zeros((1, 3, 64, 128), np.float32))\n"
        "import atdt_train.export\n"                               # the training side's way
        "import onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(chain / 'chain.onnx')!r}, providers=['CPUExecutionProvider'])\n"
        "s.run(None, {s.get_inputs()[0].name: np.zeros((1, 3, 64, 128), np.float32)})\n"
        "print('ran', out['semantic'].shape)\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ran (1, 64, 128)" in done.stdout
    leftovers = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not (home / ".cache" / "Microsoft").exists(), leftovers


# ---- model files that execute code -----------------------------------------------------------

def test_the_crafted_pt2_runs_code_when_loaded_the_old_way(chain, tmp_path) -> None:
    marker = tmp_path / "ran"
    crafted = chain_helpers.crafted_pt2(chain / "chain.pt2", tmp_path / "chain.pt2", marker)
    subprocess.run([sys.executable, "-c", f"import torch\ntry: torch.export.load({str(crafted)!r})\n"
                    "except Exception: pass"], capture_output=True, timeout=120)
    assert marker.exists()  # the payload is live: the refusals below matter


def test_pt2_backends_are_refused_without_trust_model_code(chain, tmp_path) -> None:
    marker = tmp_path / "ran"
    crafted = _crafted_artifact(chain, tmp_path, marker, rehash=True)
    for name in ("torch", "tensorrt"):
        with pytest.raises(BackendUnavailable, match=rf"backend {name} would load "
                           rf"{crafted / 'chain.pt2'} with torch.export.load, which unpickles"):
            open_backend(crafted, name)
    with pytest.raises(BackendUnavailable, match="compile needs backend torch.*trust_model_code"):
        open_backend(crafted, "auto", compile=True)
    with pytest.raises(BackendUnavailable, match="precision bf16 needs backend torch"):
        open_backend(crafted, "auto", precision="bf16")
    assert open_backend(crafted, "auto").name == "onnxruntime"  # ONNX: data, no trust needed
    assert not marker.exists()


def test_a_swapped_pt2_is_refused_by_its_hash_even_when_trusted(chain, tmp_path) -> None:
    marker = tmp_path / "ran"
    crafted = _crafted_artifact(chain, tmp_path, marker, rehash=False)
    with pytest.raises(ArtifactError, match=r"chain.pt2 does not match its SHA-256 in "
                                            r"metadata.json .* modified or replaced"):
        open_backend(crafted, "torch", trust_model_code=True)
    assert not marker.exists()


def test_the_node_refuses_a_crafted_pt2_with_one_line(chain, tmp_path) -> None:
    marker = tmp_path / "ran"
    crafted = _crafted_artifact(chain, tmp_path, marker, rehash=True)
    code, out = _run_to_exit(_params_file(tmp_path, crafted, backend="torch"))
    assert code == 2, out
    lines = [line for line in out.splitlines() if "cannot start" in line]
    assert lines and all(str(crafted / "chain.pt2") in line and "trust_model_code" in line
                         for line in lines)
    assert "Traceback" not in out
    swapped = _crafted_artifact(chain, tmp_path / "s", marker, rehash=False)
    code, out = _run_to_exit(_params_file(tmp_path, swapped, backend="torch", trust_model_code=True))
    assert code == 2 and "does not match its SHA-256" in out, out
    assert not marker.exists()


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_formats_pointing_outside_the_model_directory_are_refused(chain, tmp_path, where) -> None:
    outside = _copy(chain, tmp_path, "elsewhere")  # a valid chain, just not this one
    inside = _copy(chain, tmp_path, "model")
    rel = str(outside / "chain.onnx") if where == "absolute" else "../elsewhere/chain.onnx"
    _edit_metadata(inside, lambda r: (r["formats"].update(onnx=rel),
                                      r["files"].update({rel: sha256_file(outside / "chain.onnx")})))
    with pytest.raises(ArtifactError, match="points outside the model directory"):
        load_metadata(inside)
    code, out = _run_to_exit(_params_file(tmp_path, inside, backend="onnxruntime"))
    assert code == 2 and "points outside the model directory" in out and rel in out, out


def test_a_symbolic_link_out_of_the_model_directory_is_refused(chain, tmp_path) -> None:
    outside = _copy(chain, tmp_path, "elsewhere")
    inside = _copy(chain, tmp_path, "model")
    (inside / "chain.onnx").unlink()
    (inside / "chain.onnx").symlink_to(outside / "chain.onnx")  # same bytes, same hash
    with pytest.raises(ArtifactError, match=r"resolves to .*elsewhere/chain.onnx, outside the model"):
        open_backend(inside, "onnxruntime")


def test_a_crafted_checkpoint_is_refused_and_set_aside(tmp_path, caplog) -> None:
    from atdt_train.lit import AtomicCheckpointIO
    from atdt_train.checkpoints import resume_checkpoint

    marker = tmp_path / "ran"
    folder = tmp_path / "stage"
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3, "state_dict": {}, "loops": chain_helpers.CodeOnLoad(marker)}, last)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(last)  # what Lightning's resume calls
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(folder) is None
    assert f"checkpoint {last} refused: it holds objects that would run code" in caplog.text
    assert not last.exists() and last.with_suffix(".ckpt.corrupt").exists()
    assert not marker.exists()


def test_an_engine_not_written_by_the_cache_is_never_loaded(chain, tmp_path, caplog) -> None:
    marker = tmp_path / "ran"
    loads = []

    def load(path: Path):
        loads.append(path)
        return torch.export.load(str(path)).module()

    key = engine_key("c0ffee" * 11, "NVIDIA H200", "10.9.0", "fp16")
    cache = EngineCache(tmp_path, key)
    cache.directory.mkdir(parents=True)
    chain_helpers.crafted_pt2(chain / "chain.pt2", cache.engine_path, marker)
    for record in ({"key": key}, {"key": key, "sha256": "0" * 64}):  # no hash, a wrong one
        cache.record_path.write_text(json.dumps(record))
        with caplog.at_level(logging.WARNING, logger="atdt_ros.backends"):
            assert cache.load(load, check=lambda m: None) is None
        assert f"{cache.engine_path} unusable" in caplog.text
        assert "not the one its record holds" in caplog.text
    assert loads == [] and not marker.exists()


# ---- compiler caches ----------------------------------------------------------------------

def test_compiler_caches_are_private_directories(tmp_path, monkeypatch) -> None:
    from atdt_ros.privacy import UnsafeCacheError, check_private, compiler_cache_env

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # torch's own default, a predictable name in the shared temporary directory, is replaced
    import getpass
    import tempfile
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR",
                       str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    chosen = compiler_cache_env()
    assert chosen == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache" / "atdt" / "torchinductor"),
                      "TRITON_CACHE_DIR": str(tmp_path / "cache" / "atdt" / "triton")}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == chosen["TORCHINDUCTOR_CACHE_DIR"]
    for path in chosen.values():
        assert (os.stat(path).st_mode & 0o777) == 0o700

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeCacheError, match="writable by group or others"):
        check_private(shared)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))  # a user's choice is checked too
    with pytest.raises(UnsafeCacheError, match=f"{shared} is writable by group or others"):
        compiler_cache_env()
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    if os.geteuid() == 0:  # root can hand the directory to another user
        os.chown(foreign, 65534, 65534)
        with pytest.raises(UnsafeCacheError, match="belongs to uid 65534"):
            check_private(foreign)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "cache")
    with pytest.raises(UnsafeCacheError, match="is a symbolic link"):
        check_private(link)


# ---- text from messages ---------------------------------------------------------------------

def test_text_from_messages_is_escaped_and_capped() -> None:
    from atdt_ros.sanitize import MAX_ECHO, printable

    forged = "cam\n[FATAL] [atdt_perception]: forged\x1b[31m\r\u202e"
    assert printable(forged) == "cam\\n[FATAL] [atdt_perception]: forged\\x1b[31m\\r\\u202e"
    huge = printable("x" * 1_000_000)
    assert huge == "x" * MAX_ECHO + f"...(+{1_000_000 - MAX_ECHO} chars)"
    assert printable("a\\nb") == "a\\\\nb"  # a literal backslash-n is not an escaped newline
    assert printable("camera_optical") == "camera_optical"
