"""The exported chain: Eq. 4 from one E1 pass, pt2/onnx parity with eager, metadata format and
validation, backend selection, TensorRT refused where unavailable, and ``atdt_train export`` on a
trained (tiny) experiment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import chain_helpers
from atdt_ros.artifact import (
    FORMAT_VERSION, ArtifactError, ParityTolerance, format_path, load_metadata, sha256_file,
)
from atdt_ros.backends import (
    BackendUnavailable, engine_key, native_bf16, open_backend, tensorrt_status,
)
from atdt_train.export import ExportError, build_chain, export_chain

TRT_OK = tensorrt_status()[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return chain_helpers.exported_chain(tmp_path_factory)


def test_chain_is_eq4_from_one_encoder_pass() -> None:
    n1, n2, g = chain_helpers.seeded_networks()
    chain = build_chain(n1, n2, g, "dep2sem")
    calls = []
    n1.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    x = torch.from_numpy(chain_helpers.parity_frames(2))
    with torch.inference_mode():
        depth, semantic = chain(x)
        assert len(calls) == 1  # both tasks from one E1 pass
        torch.testing.assert_close(depth, n1(x))                                # D1(E1(x))
        logits = n2.decoder(g(n1.encoder(x)), tuple(x.shape[-2:]))               # D2(G(E1(x)))
        torch.testing.assert_close(semantic, logits.argmax(1))
    assert depth.shape == (2, 1, *chain_helpers.INPUT_SIZE) and semantic.dtype == torch.int64

    sem2dep = build_chain(n2, n1, g, "sem2dep")  # N1 semantic, N2 depth: outputs swap roles
    with torch.inference_mode():
        d2, s2 = sem2dep(x)
        torch.testing.assert_close(s2, n2(x).argmax(1))
        torch.testing.assert_close(d2, n1.decoder(g(n2.encoder(x)), tuple(x.shape[-2:])))


def test_exported_formats_match_eager_and_metadata_records_it(chain) -> None:
    md = load_metadata(chain)
    assert md.format_version == FORMAT_VERSION
    assert (md.input.height, md.input.width) == chain_helpers.INPUT_SIZE
    assert md.input.channels == "rgb" and md.input.mean == (0.485, 0.456, 0.406)
    assert md.tasks == {"task1": "depth", "task2": "semantic"}
    assert md.classes.names[0] == "road" and md.classes.unlabeled_id == 255
    assert md.depth.units == "m" and md.versions["torch"] == torch.__version__
    assert md.sources == {"n1": "0" * 64} and len(md.model_hash) == 64
    assert set(md.formats) == {"pt2", "onnx"}
    for fmt in ("pt2", "onnx"):
        assert md.parity[fmt]["depth_max_abs"] <= md.parity_tolerance.depth_max_abs
        assert md.parity[fmt]["semantic_agreement"] >= md.parity_tolerance.semantic_min_agreement
    assert md.parity["pt2"]["depth_max_abs"] == 0.0  # torch.export is exact
    if native_bf16():  # recorded for the node's precision bf16 where it pays off
        assert md.parity["pt2_bf16"]["gating"] is False
    else:
        assert "pt2_bf16" not in md.parity
    assert (chain / "chain.onnx.data").is_file()
    assert not [p for p in chain.iterdir() if p.name.startswith(".")]  # no temp files left

    n1, n2, g = chain_helpers.seeded_networks()
    eager = build_chain(n1, n2, g, "dep2sem")
    x = chain_helpers.parity_frames(3, seed=5)  # frames not used by the export's check
    with torch.inference_mode():
        ref_d, ref_s = (t.numpy() for t in eager(torch.from_numpy(x)))
    for name in ("torch", "onnxruntime"):
        backend = open_backend(chain, name, trust_model_code=True)
        for i in range(3):
            out = backend.infer(x[i:i + 1])
            np.testing.assert_allclose(out["depth"], ref_d[i:i + 1], atol=1e-3)
            assert (out["semantic"] == ref_s[i:i + 1]).mean() >= 0.999
    bf16 = open_backend(chain, "torch", precision="bf16", trust_model_code=True)  # autocast: close, not equal
    out = bf16.infer(x[:1])
    assert out["depth"].dtype == np.float32
    assert np.median(np.abs(out["depth"] - ref_d[:1]) / np.abs(ref_d[:1])) < 0.02
    assert (out["semantic"] == ref_s[:1]).mean() >= 0.98


def test_a_g_without_halvings_exports_and_matches_eager(tmp_path) -> None:
    """``model.transfer_down: 0`` (dilated stride-1 convolutions in G) through ONNX: the export's
    parity check passes and ONNX Runtime gives D2(G(E1(x))) of the eager networks."""
    from atdt_train.models import TransferNet

    n1, n2, _ = chain_helpers.seeded_networks()
    torch.manual_seed(1)
    g = TransferNet(n1.encoder.out_channels, down=0).eval()
    export_chain(n1, n2, g, tmp_path, direction="dep2sem", input_size=chain_helpers.INPUT_SIZE,
                 frames=chain_helpers.parity_frames(), formats=("onnx",))
    x = chain_helpers.parity_frames(2, seed=7)
    with torch.inference_mode():
        ref = n2.decoder(g(n1.encoder(torch.from_numpy(x))), chain_helpers.INPUT_SIZE).argmax(1).numpy()
    out = open_backend(tmp_path, "onnxruntime").infer(x[:1])
    assert (out["semantic"] == ref[:1]).mean() >= 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_torch_backend_matches_the_program(chain, precision, caplog) -> None:
    import logging

    if precision == "bf16" and not native_bf16():
        pytest.skip("bf16 needs a CPU with native bf16 (AVX-512 BF16 / AMX); emulated is slow")
    x = chain_helpers.parity_frames(2, seed=7)
    ref = open_backend(chain, "torch", trust_model_code=True)
    with caplog.at_level(logging.INFO, logger="atdt_ros.backends"):
        compiled = open_backend(chain, "auto", precision=precision, compile=True,
                                trust_model_code=True)
    assert compiled.name == "torch"  # auto picks the backend that compiles
    assert compiled.compiled and compiled.compile_seconds > 0
    assert f"torch.compile ({precision}, cpu): ready in" in caplog.text
    for i in range(2):
        want, out = ref.infer(x[i:i + 1]), compiled.infer(x[i:i + 1])
        assert out["depth"].dtype == np.float32 and out["depth"].shape == want["depth"].shape
        if precision == "fp32":  # batch norms folded: float rounding only
            np.testing.assert_allclose(out["depth"], want["depth"], atol=1e-3)
            assert (out["semantic"] == want["semantic"]).mean() >= 0.999
        else:
            assert np.median(np.abs(out["depth"] - want["depth"]) / np.abs(want["depth"])) < 0.02
            assert (out["semantic"] == want["semantic"]).mean() >= 0.98
    uncompiled = open_backend(chain, "torch", trust_model_code=True)
    assert not uncompiled.compiled and uncompiled.compile_seconds == 0.0


def test_compile_is_refused_for_other_backends(chain) -> None:
    with pytest.raises(BackendUnavailable, match="compile applies to backend torch .* not onnxruntime"):
        open_backend(chain, "onnxruntime", compile=True)


def test_pt2_has_a_dynamic_batch(chain) -> None:
    module = torch.export.load(str(chain / "chain.pt2")).module()
    for n in (1, 3):
        depth, semantic = module(torch.zeros(n, 3, *chain_helpers.INPUT_SIZE))
        assert depth.shape[0] == semantic.shape[0] == n


def test_auto_backend_picks_the_fastest_available(chain, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="atdt_ros.backends"):
        backend = open_backend(chain, "auto", trust_model_code=True)
    assert backend.name == ("tensorrt" if TRT_OK else "onnxruntime")
    assert f"backend auto chose {backend.name}" in caplog.text


@pytest.mark.skipif(TRT_OK, reason="checks the refusal on machines without CUDA/TensorRT")
def test_tensorrt_is_refused_clearly_without_cuda(chain, tmp_path) -> None:
    with pytest.raises(BackendUnavailable, match="backend tensorrt is unavailable: CUDA"):
        open_backend(chain, "tensorrt", device="cuda", trust_model_code=True)
    n1, n2, g = chain_helpers.seeded_networks()
    with pytest.raises(ExportError, match="format tensorrt cannot be built here: CUDA"):
        export_chain(n1, n2, g, tmp_path / "trt", direction="dep2sem",
                     input_size=chain_helpers.INPUT_SIZE, frames=chain_helpers.parity_frames(1),
                     formats=("tensorrt",))
    assert not (tmp_path / "trt").exists()


def test_engine_cache_key_names_model_gpu_tensorrt_and_precision() -> None:
    key = engine_key("ab" * 32, "NVIDIA H100 80GB HBM3", "10.3.0.26", "fp16")
    assert key == "abababababababab_nvidia-h100-80gb-hbm3_trt10.3.0.26_fp16"
    assert key != engine_key("ab" * 32, "NVIDIA H100 80GB HBM3", "10.4.0", "fp16")
    assert key != engine_key("ab" * 32, "NVIDIA H100 80GB HBM3", "10.3.0.26", "fp32")


def test_parity_failure_fails_the_export(tmp_path) -> None:
    n1, n2, g = chain_helpers.seeded_networks()
    with pytest.raises(ExportError, match="parity check failed .* pt2: depth max"):
        export_chain(n1, n2, g, tmp_path / "strict", direction="dep2sem",
                     input_size=chain_helpers.INPUT_SIZE, frames=chain_helpers.parity_frames(1),
                     formats=("pt2",), tolerance=ParityTolerance(-1.0, 0.999))
    # the failed measurement stays on record for inspection
    raw = json.loads((tmp_path / "strict" / "metadata.json").read_text())
    assert raw["parity"]["pt2"]["depth_max_abs"] == 0.0


def _write(tmp: Path, chain: Path, edit) -> Path:
    raw = json.loads((chain / "metadata.json").read_text())
    edit(raw)
    out = tmp / "edited"
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps(raw))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(format_version=FORMAT_VERSION + 1),
     f"format_version {FORMAT_VERSION + 1} is not supported"),
    (lambda r: r["input"].pop("mean"), "input.mean: missing required key"),
    (lambda r: r["input"].update(height="64"), "input.height: expected int, got str"),
    (lambda r: r["depth"].update(units="mm"), "depth.units: expected 'm'"),
    (lambda r: r.update(direction="sideways"), "direction: 'sideways', expected one of"),
    (lambda r: r["classes"].update(unlabeled_id=3), "unlabeled_id: 3 must be in 0..255 and not"),
    (lambda r: r["input"].update(mean=["a", 0.4, 0.4]), "input.mean: expected a list of numbers"),
    (lambda r: r["classes"].update(colors=[1] * len(r["classes"]["ids"])),
     r"classes.colors: expected a list of \[r, g, b\] lists"),
    (lambda r: r["depth"].update(min=90.0, max=80.0), "depth: min 90 must be below max 80"),
    (lambda r: r["formats"].update(onnx="/etc/chain.onnx"), "points outside the model directory"),
    (lambda r: r["files"].update({"chain.onnx": "nothex"}), "expected a SHA-256 hex digest"),
])
def test_invalid_metadata_is_refused_naming_the_key(tmp_path, chain, edit, message) -> None:
    with pytest.raises(ArtifactError, match=message):
        load_metadata(_write(tmp_path, chain, edit))


def test_missing_and_corrupt_artifacts_name_the_file(tmp_path, chain) -> None:
    with pytest.raises(ArtifactError, match=f"{tmp_path / 'nope'} does not exist"):
        load_metadata(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="metadata.json is missing"):
        load_metadata(tmp_path / "empty")
    (tmp_path / "empty" / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="metadata.json is corrupt"):
        load_metadata(tmp_path / "empty")
    no_weights = _write(tmp_path, chain, lambda r: None)
    with pytest.raises(ArtifactError, match="chain.pt2 is missing"):
        format_path(no_weights, load_metadata(no_weights), "pt2")
    (no_weights / "chain.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ArtifactError, match="chain.pt2 does not match its SHA-256"):
        open_backend(no_weights, "torch", trust_model_code=True)
    # the recorded hash of a corrupt file: it reaches torch, whose failure names the file
    raw = json.loads((no_weights / "metadata.json").read_text())
    raw["files"]["chain.pt2"] = sha256_file(no_weights / "chain.pt2")
    (no_weights / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="chain.pt2 cannot be loaded by torch"):
        open_backend(no_weights, "torch", trust_model_code=True)


def test_cli_exports_a_trained_experiment(tmp_path) -> None:
    """`atdt_train export` on an experiment trained for one step per stage (tiny domains)."""
    from atdt_train.cli import main
    from atdt_train.config import load_experiment
    from atdt_train.checkpoints import weights_path
    from atdt_train.stages import train_stage

    lists = {d: chain_helpers.write_tiny_domain(tmp_path / d, d) for d in "AB"}
    exp_path = tmp_path / "tiny.yaml"
    exp_path.write_text(json.dumps({
        "name": "tiny", "direction": "sem2dep", "out_dir": str(tmp_path / "run"),
        "domains": {d: {"train": lists[d]["train"], "test": lists[d]["test"], "kind": "sim"}
                    for d in "AB"},
        "data": {"height": 32, "width": 64, "batch_size": 2, "num_workers": 0},
        "steps": {"n1": 1, "n2": 1, "g": 1, "oracle": 1},
        "trainer": {"progress_bar": False, "threads": 1},
    }))
    exp = load_experiment(exp_path)
    for stage in ("n1", "n2", "g"):
        train_stage(exp, stage)
    out = tmp_path / "chain"
    assert main(["export", str(exp_path), "--out", str(out), "--formats", "pt2",
                 "--parity-frames", "2"]) == 0
    md = load_metadata(out)
    assert md.direction == "sem2dep" and md.tasks == {"task1": "semantic", "task2": "depth"}
    assert (md.input.height, md.input.width) == (32, 64)
    assert md.depth.min == 0.5 and md.depth.max == 80.0
    assert md.sources == {k: sha256_file(weights_path(exp, k)) for k in ("n1", "n2", "g")}
    assert md.parity["pt2"]["frames"] == 2 and md.parity["pt2"]["depth_max_abs"] == 0.0
    assert "domains.B.test" in md.extra["parity_frames_from"]
