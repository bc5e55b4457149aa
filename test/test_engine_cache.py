"""The TensorRT engine cache: reuse, rebuild on any mismatch, atomic writes, build-only.

The cache logic (:class:`atdt_ros.backends.EngineCache`) is tested on every machine with
torch.export programs as the cached engines: ``torch_tensorrt.save`` writes the same kind of
file (an ExportedProgram archive), and the cache neither knows nor cares which compiler made it.
The tests at the end compile real TensorRT engines and run only where CUDA and torch-tensorrt
are importable (a GPU machine); elsewhere pytest reports them as skipped, with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import chain_helpers
from atdt_ros.artifact import format_path, load_metadata, sha256_file
from atdt_ros.backends import EngineCache, engine_key, open_backend, tensorrt_status

TRT_OK, TRT_WHY = tensorrt_status()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f"needs CUDA and torch-tensorrt: {TRT_WHY}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return chain_helpers.exported_chain(tmp_path_factory)


class Compiler:
    """Builds an 'engine' by saving the artifact's .pt2 program; counts its builds."""

    def __init__(self, artifact: Path) -> None:
        self.program = torch.export.load(str(format_path(artifact, load_metadata(artifact), "pt2")))
        self.builds: list[Path] = []

    def build(self, tmp: Path):
        self.builds.append(tmp)
        torch.export.save(self.program, str(tmp))
        return self.program.module()


def _load(path: Path):
    return torch.export.load(str(path)).module()


def _check_for(artifact: Path):
    inp = load_metadata(artifact).input
    example = torch.zeros(1, 3, inp.height, inp.width)

    def check(module) -> None:
        depth, semantic = module(example)
        assert depth.shape == (1, 1, inp.height, inp.width)
    return check


def _cache(directory: Path, precision: str = "fp16", gpu: str = "NVIDIA H200") -> EngineCache:
    key = engine_key("c0ffee" * 11, gpu, "10.9.0", precision)
    return EngineCache(directory, key, {"gpu": gpu, "precision": precision})


def test_first_use_builds_and_later_uses_load_the_cached_engine(chain, tmp_path) -> None:
    compiler, check = Compiler(chain), _check_for(chain)
    cache = _cache(tmp_path)
    engine, built = cache.get(_load, check, compiler.build)
    assert built and len(compiler.builds) == 1
    assert cache.engine_path == tmp_path / "engines" / f"{cache.key}.ep"
    assert json.loads(cache.record_path.read_text()) == {
        "key": cache.key, "gpu": "NVIDIA H200", "precision": "fp16",
        "sha256": sha256_file(cache.engine_path)}
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        f"{cache.key}.ep", f"{cache.key}.json"]  # no temporary file left behind
    again, built = _cache(tmp_path).get(_load, check, compiler.build)
    assert not built and len(compiler.builds) == 1
    x = torch.from_numpy(chain_helpers.parity_frames(1))
    for a, b in zip(engine(x), again(x)):
        assert torch.equal(a, b)


def test_each_precision_and_gpu_has_its_own_engine(chain, tmp_path) -> None:
    compiler, check = Compiler(chain), _check_for(chain)
    caches = [_cache(tmp_path, "fp16"), _cache(tmp_path, "fp32"),
              _cache(tmp_path, "fp16", gpu="NVIDIA H100 80GB HBM3")]
    assert [c.get(_load, check, compiler.build)[1] for c in caches] == [True, True, True]
    assert len({c.engine_path for c in caches}) == 3
    assert [c.get(_load, check, compiler.build)[1] for c in caches] == [False, False, False]
    assert len(compiler.builds) == 3


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "unusable"),
    ("foreign_record", "its record names key 'someone-else'"),
    ("no_record", "is missing"),
    ("stale", "AssertionError"),
])
def test_a_damaged_or_foreign_engine_is_rebuilt_with_a_warning(chain, tmp_path, caplog, damage,
                                                                reason) -> None:
    compiler, check = Compiler(chain), _check_for(chain)
    cache = _cache(tmp_path)
    cache.get(_load, check, compiler.build)
    if damage == "truncate":
        data = cache.engine_path.read_bytes()
        cache.engine_path.write_bytes(data[: len(data) // 3])
    elif damage == "foreign_record":
        cache.record_path.write_text(json.dumps({"key": "someone-else"}))
    elif damage == "no_record":
        cache.record_path.unlink()
    else:  # an engine that loads but no longer fits this input (e.g. built for another size)
        def check(module) -> None:
            raise AssertionError("output shape (1, 1, 32, 64) != (1, 1, 64, 128)")
    with caplog.at_level(logging.WARNING, logger="atdt_ros.backends"):
        engine, built = cache.get(_load, check, compiler.build)
    assert built and len(compiler.builds) == 2
    assert f"{cache.engine_path} unusable" in caplog.text and reason in caplog.text
    assert json.loads(cache.record_path.read_text())["key"] == cache.key
    assert not cache.get(_load, _check_for(chain), compiler.build)[1]


def test_a_failed_build_keeps_the_previous_engine_and_leaves_no_partial_file(chain, tmp_path) -> None:
    compiler, check = Compiler(chain), _check_for(chain)
    cache = _cache(tmp_path)
    cache.get(_load, check, compiler.build)
    before = cache.engine_path.read_bytes()

    def failing(tmp: Path):
        tmp.write_bytes(b"half an engine")
        raise RuntimeError("compiler ran out of GPU memory")
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        cache.build(failing)
    assert cache.engine_path.read_bytes() == before
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        f"{cache.key}.ep", f"{cache.key}.json"]


# ---- real TensorRT engines: GPU machines only ------------------------------------------------

@needs_tensorrt
def test_tensorrt_engine_is_built_cached_and_matches_the_eager_chain(chain, tmp_path) -> None:
    chain = Path(shutil.copytree(chain, tmp_path / "chain"))
    first = open_backend(chain, "tensorrt", device="cuda", precision="fp32", trust_model_code=True)
    assert first.built and first.engine_path.is_file()
    second = open_backend(chain, "tensorrt", device="cuda", precision="fp32", trust_model_code=True)
    assert not second.built
    batch = chain_helpers.parity_frames(1)
    ref = open_backend(chain, "torch", trust_model_code=True).infer(batch)
    out = second.infer(batch)
    assert np.abs(out["depth"] - ref["depth"]).max() < 1e-2
    assert (out["semantic"] == ref["semantic"]).mean() > 0.99


@needs_tensorrt
def test_node_build_only_prebuilds_the_engine_and_exits(chain, tmp_path) -> None:
    chain = Path(shutil.copytree(chain, tmp_path / "chain"))
    env = dict(os.environ, ROS_DOMAIN_ID=str(np.random.default_rng().integers(1, 200)),
               FASTDDS_BUILTIN_TRANSPORTS="SHM?max_msg_size=4MB&sockets_size=16MB")
    done = subprocess.run(
        [sys.executable, "-m", "atdt_ros.node", "--ros-args", "-p", f"model_path:={chain}",
         "-p", "backend:=tensorrt", "-p", "precision:=fp16", "-p", "build_only:=true",
         "-p", "trust_model_code:=true"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "build_only: backend tensorrt ready, engine" in done.stdout + done.stderr
    assert len(list((chain / "engines").glob("*_fp16.ep"))) == 1
