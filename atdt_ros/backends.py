"""Inference backends for an exported chain: ``torch`` (.pt2), ``onnxruntime`` (.onnx), ``tensorrt``.

Every backend takes a normalised float32 (1, 3, H, W) numpy batch and returns numpy arrays
``depth`` (1, 1, H, W) and ``semantic`` (1, H, W). TensorRT needs CUDA and torch-tensorrt; both
are probed defensively (torch-tensorrt raises a plain Exception on import without CUDA). Its
engines are compiled from the .pt2 program and cached in ``engines/`` under a key made of the
model hash, GPU name, TensorRT version and precision: a cached engine for anything else is
never loaded, and one that fails to load is rebuilt, never a crash.

What may be loaded: ONNX (backend onnxruntime) is data, parsed without running code, and is
the default. A .pt2 program (backends torch and tensorrt, and the engines the TensorRT cache
keeps) is read by ``torch.export.load``, which unpickles parts of the archive: a crafted file
runs code as the node's user. Those backends therefore open only with ``trust_model_code``
set by the user. Every file is checked against its SHA-256 in metadata.json first
(:func:`atdt_ros.artifact.format_path`), and every cached engine against the SHA-256 its
record holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from atdt_ros.artifact import (
    ENGINES_DIR, ArtifactError, Metadata, format_files, format_path, load_metadata, sha256_file,
)
from atdt_ros.files import atomic_write
from atdt_ros.library_output import captured, summary
from atdt_ros.privacy import UnsafeCacheError, compiler_cache_env

LOG = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("tensorrt", "onnxruntime", "torch")
"""Backend names in the order ``auto`` prefers them (fastest first)."""
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
UNPICKLING: tuple[str, ...] = ("tensorrt", "torch")
"""Backends that read the .pt2 program with torch.export.load (pickle): need trust_model_code."""


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here; the message says why."""


def require_trust(name: str, directory: Path, metadata: Metadata, trust_model_code: bool) -> None:
    """Refuse an unpickling backend unless the user trusts the model's code."""
    if trust_model_code:
        return
    pt2 = Path(directory) / metadata.formats.get("pt2", "chain.pt2")
    raise BackendUnavailable(
        f"backend {name} would load {pt2} with torch.export.load, which unpickles and can run "
        f"code from the file; refused without trust_model_code: true (set it only for a model "
        f"you exported yourself or otherwise trust; backend onnxruntime needs no trust)")


class Backend(Protocol):
    """What the node needs from an inference backend."""

    name: str
    device: str
    precision: str
    compiled: bool  # torch.compile'd at start-up (the torch backend's ``compile``)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the chain on a (1, 3, H, W) float32 batch; returns depth and semantic arrays."""
        ...


def _torch_device(device: str) -> Any:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device '{device}' requested but CUDA is not available "
                                 f"(torch {torch.__version__})")
    return torch.device(device)


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); else bf16 is emulated, slow."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compile_frozen(module: Any, first_call: Any) -> Any:
    """``module`` under torch.compile, compiled now by ``first_call(compiled)`` with inductor's
    freezing on (batch norms folded into the convolutions, weights treated as constants).

    Inductor and Triton keep what they compile in private cache directories
    (:func:`atdt_ros.privacy.compiler_cache_env`), never in the shared temporary directory:
    they load what they find there, so a directory another user can write is refused.
    """
    try:
        compiler_cache_env()
    except UnsafeCacheError as exc:
        raise BackendUnavailable(f"torch.compile: {exc}") from exc
    import torch
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)
    try:  # a failed compile's own log lines are folded into the caller's message
        with captured("torch._dynamo", "torch._inductor") as held, \
                inductor_config.patch(freezing=True):
            first_call(compiled)
    except Exception as exc:
        raise BackendUnavailable(f"torch.compile failed: {summary(exc, held)}") from exc
    return compiled


def channel_argmax(logits: Any) -> Any:
    """``logits.argmax(dim=1)`` of (N, C, H, W) logits as C-1 elementwise comparisons, first
    maximum winning as in argmax. Under torch.compile this is one vectorised loop into which the
    bilinear up-sampling before it fuses (about 1 ms less for 11 classes at 192x384, where
    inductor's argmax reduction runs scalar); in eager mode and ONNX Runtime argmax is faster."""
    import torch

    best = logits[:, 0]
    index = torch.zeros_like(best, dtype=torch.int64)
    for c in range(1, logits.shape[1]):
        value = logits[:, c]
        higher = value > best
        best = torch.where(higher, value, best)
        index = torch.where(higher, c, index)
    return index


def fuse_label_argmax(module: Any) -> int:
    """Replace every argmax over dim 1 in an exported program's graph module (the chain's
    labels) by :func:`channel_argmax`, for torch.compile; returns how many were replaced."""
    import torch

    graph, replaced = module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.argmax.default:
            continue
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dim != 1 or keepdim:
            continue
        with graph.inserting_after(node):
            fused = graph.call_function(channel_argmax, (node.args[0],))
        fused.meta.update(node.meta)
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        replaced += 1
    if replaced:
        graph.lint()
        module.recompile()
    return replaced


class TorchBackend:
    """The torch.export program (.pt2) run by PyTorch on CPU or CUDA.

    ``bf16`` runs it under bf16 autocast with channels-last tensors (about 2x faster than fp32 on
    CPUs with AVX-512 BF16 / AMX, docs/performance.md; its parity against fp32 is recorded by
    the export as ``pt2_bf16``). ``compile`` hands the program to torch.compile (inductor, with
    freezing: batch norms folded into the convolutions, memory-bound layers fused) and compiles
    it here, on a blank frame, so the first camera frame is not slow; inductor keeps what it
    compiled in a private cache directory (``TORCHINDUCTOR_CACHE_DIR``, by default
    ``~/.cache/atdt/torchinductor``), which makes later starts on the same machine several times
    quicker. Loading the .pt2 program unpickles: it needs ``trust_model_code``.
    """

    name = "torch"

    def __init__(self, directory: Path, metadata: Metadata, device: str = "cpu",
                 threads: int = 0, precision: str = "fp32", compile: bool = False,
                 trust_model_code: bool = False):
        require_trust(self.name, directory, metadata, trust_model_code)
        import torch

        if precision not in ("fp32", "bf16"):
            raise BackendUnavailable(f"backend torch runs fp32 or bf16; precision "
                                     f"'{precision}' needs backend tensorrt")
        path = format_path(directory, metadata, "pt2")
        _set_threads(threads)
        self.device, self.precision, self.compiled = device, precision, bool(compile)
        self._device = _torch_device(device)
        try:  # torch.export logs its own traceback of a failed load: folded into ours
            with captured("torch.export") as held:
                program = torch.export.load(str(path))
        except Exception as exc:  # corrupt or written by an incompatible torch
            raise ArtifactError(f"{path} cannot be loaded by torch {torch.__version__}: "
                                f"{summary(exc, held)}") from exc
        self._module = program.module().to(self._device)
        self._bf16 = precision == "bf16"
        if self._bf16 and self._device.type == "cpu" and not native_bf16():
            LOG.warning("precision bf16: this CPU has no native bf16 (AVX-512 BF16 / AMX); "
                        "emulated bf16 is many times slower than fp32")
        self._channels_last = self._bf16 or self.compiled
        if self._channels_last:
            self._module = self._module.to(memory_format=torch.channels_last)
        self._torch = torch
        self.compile_seconds = 0.0
        if self.compiled:
            fuse_label_argmax(self._module)
            blank = np.zeros((1, 3, metadata.input.height, metadata.input.width), np.float32)
            eager, started = self._module, time.perf_counter()

            def first_call(compiled: Any) -> None:
                self._module = compiled
                self.infer(blank)
            try:
                self._module = compile_frozen(eager, first_call)
            except BackendUnavailable as exc:  # no C++ compiler, unsupported op, ...
                raise BackendUnavailable(f"backend torch with compile: {exc}") from exc
            self.compile_seconds = time.perf_counter() - started
            LOG.info("torch.compile (%s, %s): ready in %.1f s", precision, device,
                     self.compile_seconds)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the program; fp32 CPU outputs are returned without a copy."""
        torch = self._torch
        # inductor's freezing needs no_grad rather than inference mode
        grad_off = torch.no_grad() if self.compiled else torch.inference_mode()
        with grad_off:
            x = torch.from_numpy(batch).to(self._device, non_blocking=True)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self._bf16):
                out = _as_dict(self._module(x))
            if self._bf16:
                out["depth"] = out["depth"].float()
        return {k: v.cpu().numpy() for k, v in out.items()}


def _as_dict(out: Any) -> dict[str, Any]:
    if isinstance(out, dict):
        return out
    depth, semantic = out
    return {"depth": depth, "semantic": semantic}


def onnxruntime_options(threads: int = 0):
    """ONNX Runtime session options of the node: ``threads`` intra-op threads (0: its default),
    full graph optimisation, and idle worker threads that sleep instead of spinning (on a vehicle
    the node shares its cores with other processes, which spinning threads would slow down)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend:
    """The ONNX model run by ONNX Runtime (CPU, or CUDA when its provider is installed)."""

    name = "onnxruntime"
    compiled = False

    def __init__(self, directory: Path, metadata: Metadata, device: str = "cpu",
                 threads: int = 0, precision: str = "fp32"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        if precision != "fp32":
            raise BackendUnavailable(f"backend onnxruntime runs the exported fp32 model only; "
                                     f"precision '{precision}' needs backend tensorrt")
        path = format_path(directory, metadata, "onnx")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"device '{device}' requested but onnxruntime {ort.__version__} has no "
                    f"CUDAExecutionProvider (available: {ort.get_available_providers()})")
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime_options(threads)
        try:  # ONNX Runtime's logger prints the reason to fd 2 before raising: folded into ours
            with captured() as held:
                self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            reason = summary(exc, held)
            data = [p for p in format_files(metadata, "onnx")[1:] if "external" in reason.lower()]
            with_data = f" (with its external data {', '.join(data)})" if data else ""
            raise ArtifactError(f"{path}{with_data} cannot be loaded by onnxruntime "
                                f"{ort.__version__}: {reason}") from exc
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        missing = {"depth", "semantic"} - set(self._outputs)
        if missing:
            raise ArtifactError(f"{path}: outputs {self._outputs} lack {sorted(missing)}")
        self.device, self.precision = device, precision

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one session call."""
        values = self._session.run(self._outputs, {self._input: batch})
        return dict(zip(self._outputs, values))


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): whether CUDA and torch-tensorrt can compile engines here."""
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not installed ({exc})"
    if not torch.cuda.is_available():
        return False, f"CUDA is not available (torch {torch.__version__})"
    try:
        import torch_tensorrt  # noqa: F401  (raises a plain Exception without CUDA libraries)
    except Exception as exc:
        return False, f"torch-tensorrt cannot be imported: {type(exc).__name__}: {exc}"
    return True, f"torch-tensorrt {torch_tensorrt.__version__}"


def engine_key(model_hash: str, gpu_name: str, trt_version: str, precision: str) -> str:
    """Cache key of a compiled engine: model hash, GPU, TensorRT version, precision."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    trt = re.sub(r"[^A-Za-z0-9.]+", "-", trt_version)
    return f"{model_hash[:16]}_{gpu}_trt{trt}_{precision}"


class EngineCache:
    """Compiled engines of one artifact in ``<artifact>/engines/``, one file per key.

    ``key`` (see :func:`engine_key`) names the model hash, GPU, TensorRT version and precision,
    and a record ``<key>.json`` written next to each engine repeats it with the engine's
    SHA-256. An engine is loaded only when its record names the same key and its bytes have the
    recorded hash (an engine file put there by anyone but this cache is never unpickled), and
    it is reused only when it then runs on an example input; a missing,
    foreign, corrupt or stale engine is rebuilt with a warning that says why, never a crash.
    Engines and records are written atomically (temporary file, then rename), so a build
    interrupted half-way leaves the previous engine or none, not a truncated file.
    """

    def __init__(self, directory: str | os.PathLike, key: str, record: dict[str, Any] | None = None):
        self.key = key
        self.record = {"key": key, **(record or {})}
        self.directory = Path(directory) / ENGINES_DIR
        self.engine_path = self.directory / f"{key}.ep"
        self.record_path = self.directory / f"{key}.json"

    def load(self, load: Any, check: Any) -> Any | None:
        """The cached engine (``load(path)``, then ``check(engine)``), or None when unusable."""
        if not self.engine_path.is_file():
            return None
        try:
            if not self.record_path.is_file():
                raise ValueError(f"its record {self.record_path.name} is missing")
            record = json.loads(self.record_path.read_text())
            recorded = record.get("key")
            if recorded != self.key:
                raise ValueError(f"its record names key {recorded!r}")
            digest = sha256_file(self.engine_path)
            if digest != record.get("sha256"):
                raise ValueError(f"its SHA-256 {digest[:16]}... is not the one its record holds "
                                 f"({str(record.get('sha256'))[:16]}...): not written by this "
                                 f"cache, not loaded")
            engine = load(self.engine_path)
            check(engine)  # a stale engine fails here, not on the first camera frame
        except Exception as exc:  # foreign, corrupt or stale: rebuild
            LOG.warning("engine cache: %s unusable (%s: %s); rebuilding", self.engine_path,
                        type(exc).__name__, exc)
            return None
        LOG.info("engine cache: loaded %s", self.engine_path)
        return engine

    def build(self, build: Any) -> Any:
        """``build(temporary path)`` writes and returns a new engine; it replaces the cached one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # the suffix stays last: savers may pick the file format from it
        tmp = self.engine_path.with_name(f"{self.key}.{os.getpid()}.tmp{self.engine_path.suffix}")
        try:
            engine = build(tmp)
            digest = sha256_file(tmp)
            os.replace(tmp, self.engine_path)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write(self.record_path, json.dumps({**self.record, "sha256": digest}, indent=2) + "\n")
        LOG.info("engine cache: wrote %s", self.engine_path)
        return engine

    def get(self, load: Any, check: Any, build: Any) -> tuple[Any, bool]:
        """(engine, built): the cached engine when usable, else a freshly built one."""
        engine = self.load(load, check)
        if engine is not None:
            return engine, False
        return self.build(build), True


class TensorRTBackend:
    """The .pt2 program compiled by torch-tensorrt, kept in an :class:`EngineCache`."""

    name = "tensorrt"
    compiled = False  # compiled by TensorRT, not torch.compile

    def __init__(self, directory: Path, metadata: Metadata, device: str = "cuda",
                 threads: int = 0, precision: str = "fp16", build_only: bool = False,
                 trust_model_code: bool = False):
        require_trust(self.name, directory, metadata, trust_model_code)
        ok, why = tensorrt_status()
        if not ok:
            raise BackendUnavailable(f"backend tensorrt is unavailable: {why}")
        import torch
        import torch_tensorrt

        if not device.startswith("cuda"):
            device = "cuda"
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"backend tensorrt supports precision fp32 or fp16, "
                                     f"not '{precision}'")
        self.device, self.precision = device, precision
        self._torch = torch
        dev = torch.device(device)
        gpu = torch.cuda.get_device_name(dev)
        trt_version = _tensorrt_version(torch_tensorrt)
        cache = EngineCache(directory, engine_key(metadata.model_hash, gpu, trt_version, precision),
                            {"model_hash": metadata.model_hash, "gpu": gpu,
                             "tensorrt": trt_version, "precision": precision})
        self.engine_path = cache.engine_path
        inp = metadata.input
        example = torch.zeros(1, 3, inp.height, inp.width, device=dev)
        program_path = format_path(directory, metadata, "pt2")

        def build(tmp: Path) -> Any:
            program = torch.export.load(str(program_path))
            LOG.info("tensorrt: compiling %s (%s); this takes a while", cache.engine_path.name,
                     precision)
            dtypes = {torch.float16} if precision == "fp16" else {torch.float32}
            trt_module = torch_tensorrt.dynamo.compile(
                program, inputs=[example], enabled_precisions=dtypes,
                device=torch_tensorrt.Device(device))
            torch_tensorrt.save(trt_module, str(tmp), inputs=[example])
            return trt_module

        self._module, self.built = cache.get(
            load=lambda path: torch.export.load(str(path)).module(),
            check=lambda module: module(example), build=build)
        self.built_only = build_only

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the engine on the GPU; outputs are copied back to host memory."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            out = self._module(x)
        return {k: v.cpu().numpy() for k, v in _as_dict(out).items()}


def _tensorrt_version(torch_tensorrt: Any) -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:
        return "unknown-" + str(torch_tensorrt.__version__)


def available(directory: str | os.PathLike, metadata: Metadata, device: str,
              trust_model_code: bool = False) -> list[str]:
    """Backends that can run this artifact here, in ``auto``'s order of preference; the
    unpickling ones (:data:`UNPICKLING`) only with ``trust_model_code``."""
    names = []
    if "pt2" in metadata.formats and trust_model_code and tensorrt_status()[0]:
        names.append("tensorrt")
    if "onnx" in metadata.formats:
        try:
            import onnxruntime as ort

            if not device.startswith("cuda") or \
                    "CUDAExecutionProvider" in ort.get_available_providers():
                names.append("onnxruntime")
        except ImportError:
            pass
    if "pt2" in metadata.formats and trust_model_code:
        names.append("torch")
    return names


def open_backend(directory: str | os.PathLike, name: str = "auto", device: str = "cpu",
                 threads: int = 0, precision: str = "fp32", build_only: bool = False,
                 metadata: Metadata | None = None, compile: bool = False,
                 trust_model_code: bool = False) -> Backend:
    """Load an artifact with the named backend; ``auto`` takes the first available one.

    ``compile`` (torch.compile) applies to the torch backend; ``auto`` then picks torch.
    ``trust_model_code`` allows the backends that unpickle the .pt2 program (torch, tensorrt);
    without it ``auto`` considers ONNX Runtime only.
    """
    directory = Path(directory)
    metadata = metadata or load_metadata(directory)
    if name not in ("auto",) + BACKENDS:
        raise BackendUnavailable(f"unknown backend '{name}' (accepted: auto, "
                                 f"{', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"unknown precision '{precision}' (accepted: "
                                 f"{', '.join(PRECISIONS)})")
    if name == "auto":
        choices = available(directory, metadata, device, trust_model_code)
        untrusted = "" if trust_model_code or "pt2" not in metadata.formats else \
            "; backends torch and tensorrt need trust_model_code: true (they unpickle chain.pt2)"
        if not choices:
            raise BackendUnavailable(f"no backend can run {directory} on '{device}' "
                                     f"(exported formats: {sorted(metadata.formats)}{untrusted})")
        if (compile or precision == "bf16") and "torch" not in choices and untrusted:
            wanted = "compile" if compile else "precision bf16"
            raise BackendUnavailable(f"{wanted} needs backend torch, which loads chain.pt2 with "
                                     f"torch.export.load (unpickling, can run code): set "
                                     f"trust_model_code: true for a model you trust, or use "
                                     f"{'compile false' if compile else 'precision fp32'}")
        name = choices[0]
        if compile and "torch" in choices:
            name = "torch"  # only the torch backend compiles
        elif name == "onnxruntime" and precision == "bf16" and "torch" in choices:
            name = "torch"  # ONNX Runtime runs the fp32 model only; torch runs bf16
        if name != "tensorrt" and precision == "fp16":
            LOG.info("auto: precision fp16 needs tensorrt; using fp32")
            precision = "fp32"
        why = "" if name == "tensorrt" else f" (tensorrt: {tensorrt_status()[1]})"
        LOG.info("backend auto chose %s on %s%s", name, device, why)
    if compile and name != "torch":
        raise BackendUnavailable(f"compile applies to backend torch (torch.compile), not {name}; "
                                 f"set backend torch or auto, or compile false")
    if name == "tensorrt":
        return TensorRTBackend(directory, metadata, device, threads, precision,
                               build_only=build_only, trust_model_code=trust_model_code)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(directory, metadata, device, threads, precision)
    return TorchBackend(directory, metadata, device, threads, precision, compile=compile,
                        trust_model_code=trust_model_code)
