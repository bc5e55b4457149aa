"""One replay run: publishing, matching outputs to ground truth by stamp, scoring, counting."""

from __future__ import annotations

import dataclasses
import math
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atdt_ros import classmap
from atdt_ros.imgproc import InputError, image_to_array
from atdt_ros.metrics import DepthMetric, SegmentationMetric
from atdt_ros.replay.bag import BagSource, decode_ground_truth_depth, decode_labels, rgb_of
from atdt_ros.replay.common import DEFAULT_TOPICS, MODES, NODE_NAME, WARMUP_SEC, ReplayError, log, stamp_ns
from atdt_ros.replay.link import NodeLink
from atdt_ros.replay.process import start_node, stop_node
from atdt_ros.replay.records import FrameRecord, Tally
from atdt_ros.replay.report import write_report


@dataclass
class ReplayOptions:
    """Everything a replay needs (the command line's arguments)."""

    bag: str
    out: str
    mode: str = "accuracy"
    namespace: str = ""
    node_name: str = NODE_NAME
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    timeout: float = 30.0
    malformed_wait: float = 1.0
    resend_after: float = 5.0
    speed: float = 1.0
    min_depth: float | None = None  # None: the chain's metadata (with model), else 0.5
    max_depth: float | None = None  # None: the chain's metadata (with model), else 80
    limit: int | None = None
    figure_rows: int = 4
    diagnostics_wait: float = 2.5
    model: str | None = None
    params_file: str | None = None
    backend: str | None = None
    trust_model_code: bool = False
    progress: bool = True


class Replay:
    """One replay run: publishing, matching by stamp, scoring, counting."""

    def __init__(self, opts: ReplayOptions, link: NodeLink, source: BagSource) -> None:
        from rclpy.serialization import deserialize_message

        self.opts, self.link, self.source = opts, link, source
        self.deserialize = deserialize_message
        self.records: dict[int, FrameRecord] = {}
        self.order: list[FrameRecord] = []
        self.tally = Tally()
        self.seg = SegmentationMetric(classmap.NUM_CLASSES, classmap.UNLABELED)
        self.dep = DepthMetric(opts.min_depth, opts.max_depth)
        self.frames = source.frame_count if opts.limit is None else min(opts.limit, source.frame_count)
        rows = max(0, min(opts.figure_rows, self.frames))
        self.keep_indices = set(np.linspace(0, self.frames - 1, rows).round().astype(int).tolist()) if rows else set()
        self.kept: list[FrameRecord] = []
        self.start: float | None = None
        self.last_answer: float | None = None

    # -- outputs --------------------------------------------------------------------------
    def drain(self, block_until: float | None = None) -> None:
        """Take received outputs; with ``block_until`` (perf_counter), wait for one until then."""
        while True:
            try:
                if block_until is None:
                    item = self.link.outputs.get_nowait()
                else:
                    wait = block_until - time.perf_counter()
                    if wait <= 0:
                        return
                    item = self.link.outputs.get(timeout=wait)
                    block_until = None  # got one: take the rest without waiting
            except queue.Empty:
                return
            self._take(*item)

    def _take(self, kind: str, stamp: int, array: np.ndarray, received: float) -> None:
        record = self.records.get(stamp)
        if record is None or record.published is None:
            if stamp // 1_000_000_000 != WARMUP_SEC:
                self.tally.unmatched_outputs += 1
            return
        if record.expired:
            self.tally.late_outputs += 1
            return
        if getattr(record, f"{kind}_at") is not None:
            return  # a duplicate answer to a frame sent twice
        setattr(record, f"{kind}_at", received)
        setattr(record, kind, array)
        if record.answered:
            self.tally.answered += 1
            self.last_answer = received
        self._score(record)

    # -- ground truth -----------------------------------------------------------------------
    def _ground_truth(self, role: str, raw: bytes) -> None:
        msg = self.deserialize(raw, self.link.Image)
        stamp = stamp_ns(msg.header.stamp)
        record = self.records.get(stamp)
        if record is None:
            if len(self.order) >= self.frames:
                return  # beyond --limit
            record = self._record(stamp)
        try:
            if role == "depth":
                record.gt_depth = decode_ground_truth_depth(msg)
            else:
                record.gt_semantic = decode_labels(msg)
        except InputError as exc:
            self.tally.gt_unreadable += 1
            log.warning("ground truth %s at stamp %d unreadable: %s", role, stamp, exc)
        self._score(record)

    def _record(self, stamp: int) -> FrameRecord:
        record = FrameRecord(index=len(self.order), stamp=stamp)
        record.keep = record.index in self.keep_indices
        self.records[stamp] = record
        self.order.append(record)
        return record

    def _score(self, record: FrameRecord, final: bool = False) -> None:
        """Score a frame once its outputs and ground truth are in (or at the end, with what is there)."""
        if record.scored or not record.answered:
            return
        have_gt = record.gt_depth is not None and record.gt_semantic is not None
        if not (have_gt or final):
            return
        record.scored = True
        scored = False
        for name, pred, gt, metric in (("semantic", record.semantic, record.gt_semantic, self.seg),
                                       ("depth", record.depth, record.gt_depth, self.dep)):
            if gt is None or pred is None:
                continue
            if pred.shape == gt.shape:
                metric.update(pred, gt)
                scored = True
            else:
                self.tally.gt_mismatch += 1
                log.warning("frame %d: %s output %s vs ground truth %s: not scored",
                            record.index, name, pred.shape, gt.shape)
        self.tally.scored_frames += int(scored)
        if record.keep:
            self.kept.append(record)
        else:  # free the images
            record.depth = record.semantic = record.gt_depth = record.gt_semantic = None

    # -- the run ----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Send the first well-formed frame (stamp 0 s + n ns) until the node answers it."""
        first = None
        info = None
        for role, _, raw in self.source.messages():
            if role == "camera_info" and info is None:
                info = self.deserialize(raw, self.link.CameraInfo)
            if role == "image":
                msg = self.deserialize(raw, self.link.Image)
                try:
                    image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
                except InputError:
                    continue
                first = msg
                break
        if first is None:
            raise ReplayError(f"no well-formed camera frame in {self.source.path} to warm up with")
        deadline = time.perf_counter() + self.opts.timeout
        attempt = 0
        while True:
            attempt += 1
            first.header.stamp.sec, first.header.stamp.nanosec = WARMUP_SEC, attempt
            if info is not None:
                info.header.stamp = first.header.stamp
            self.link.publish(first, info)
            got: set[str] = set()
            until = min(deadline, time.perf_counter() + 2.0)
            while time.perf_counter() < until and len(got) < 2:
                try:
                    kind, s, _, _ = self.link.outputs.get(timeout=max(0.0, until - time.perf_counter()))
                except queue.Empty:
                    break
                if s // 1_000_000_000 == WARMUP_SEC:
                    got.add(kind)
            if len(got) == 2:
                log.info("node answered the warm-up frame (attempt %d)", attempt)
                return
            if time.perf_counter() >= deadline:
                raise ReplayError(f"the node did not answer a warm-up frame on {self.link.image_topic} "
                                  f"within {self.opts.timeout:.0f} s (both {self.link.depth_topic} and "
                                  f"{self.link.semantic_topic} are needed)")

    def run(self) -> None:
        """Publish the bag's frames (paced by mode), collect and score the outputs."""
        opts = self.opts
        bar = None
        if opts.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=self.frames, desc=f"replay ({opts.mode})", unit="frame")
            except ImportError:
                bar = None
        info = None
        first_stamp: int | None = None
        self.start = time.perf_counter()
        published = 0
        try:
            last_stamp = None
            for role, timestamp, raw in self.source.messages():
                if published >= self.frames and last_stamp is not None and timestamp > last_stamp:
                    break  # --limit reached and the last frame's ground truth read
                if role == "camera_info":
                    info = self.deserialize(raw, self.link.CameraInfo)
                    continue
                if role in ("depth", "semantic"):
                    self._ground_truth(role, raw)
                    self.drain()
                    continue
                if published >= self.frames:
                    continue
                msg = self.deserialize(raw, self.link.Image)
                stamp = stamp_ns(msg.header.stamp)
                record = self.records.get(stamp) or self._record(stamp)
                if record.published is not None:
                    log.warning("two camera frames with stamp %d: the second is skipped", stamp)
                    continue
                try:
                    pixels_ok = True
                    if record.keep:
                        record.rgb = rgb_of(msg)
                    else:
                        image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
                except InputError as exc:
                    pixels_ok = False
                    record.malformed = str(exc)
                    self.tally.malformed += 1
                    self.tally.malformed_reasons.append(f"frame {record.index}: {exc}")
                    log.warning("frame %d (stamp %d) is malformed: %s", record.index, stamp, exc)
                if first_stamp is None:
                    first_stamp = stamp
                if opts.mode == "realtime":
                    due = self.start + (stamp - first_stamp) / 1e9 / opts.speed
                    self.drain(block_until=due)
                    while time.perf_counter() < due:
                        self.drain(block_until=due)
                info_now = None
                if info is not None and stamp_ns(info.header.stamp) == stamp:
                    info_now = info
                record.published = self.link.publish(msg, info_now)
                last_stamp = timestamp
                record.sends = 1
                published += 1
                self.tally.published += 1
                if opts.mode == "accuracy":
                    self._await(record, msg, info_now, pixels_ok)
                else:
                    self.drain()
                    self._expire(time.perf_counter() - opts.timeout)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(answered=self.tally.answered, malformed=self.tally.malformed)
            self._finish()
        finally:
            if bar is not None:
                bar.close()

    def _await(self, record: FrameRecord, msg: Any, info: Any, pixels_ok: bool) -> None:
        """Accuracy mode: wait for both outputs of ``record``; resend a frame lost in transport."""
        wait = self.opts.timeout if pixels_ok else self.opts.malformed_wait
        deadline = record.published + wait  # type: ignore[operator]
        next_send = record.published + self.opts.resend_after  # type: ignore[operator]
        while not record.answered:
            now = time.perf_counter()
            if now >= deadline:
                if pixels_ok:
                    log.warning("frame %d: no answer within %.1f s", record.index, wait)
                record.expired = True
                return
            if pixels_ok and now >= next_send:
                self.link.publish(msg, info)
                record.sends += 1
                self.tally.resent += 1
                next_send = now + self.opts.resend_after
            self.drain(block_until=min(deadline, next_send))

    def _expire(self, before: float) -> None:
        """Realtime mode: give up on frames published before ``before`` and free their images."""
        for record in self.order:
            if record.published is None or record.published >= before:
                break
            if not record.answered and not record.expired:
                record.expired = True
                if not record.keep:
                    record.gt_depth = record.gt_semantic = None

    def _finish(self) -> None:
        """Wait for the last answers, then score what has not been scored."""
        if self.opts.mode == "realtime":
            hard = time.perf_counter() + self.opts.timeout
            quiet = max(1.0, 5 * (self._latency_p95() or 0.2))
            while time.perf_counter() < hard:
                pending = [r for r in self.order if r.published is not None and not r.answered
                           and not r.malformed]
                if not pending:
                    break
                since = time.perf_counter() - (self.last_answer or self.start or 0.0)
                if since > quiet and time.perf_counter() - max(r.published for r in pending) > quiet:
                    break
                self.drain(block_until=time.perf_counter() + 0.1)
        self.drain()
        # the node's /diagnostics (1 Hz by default) should cover the last frame: wait briefly for it
        until = time.perf_counter() + self.opts.diagnostics_wait
        while self.link.diagnostics_at <= (self.last_answer or 0.0) and time.perf_counter() < until:
            time.sleep(0.05)
        for record in self.order:
            if record.answered:
                self._score(record, final=True)
            elif record.published is not None:
                record.expired = True

    def _latency_p95(self) -> float | None:
        values = [r.latency for r in self.order if r.latency is not None]
        return float(np.percentile(values, 95)) if values else None

    # -- results ----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """Everything report.json holds."""
        published = [r for r in self.order if r.published is not None]
        latencies = np.array([r.latency for r in published if r.latency is not None], dtype=np.float64) * 1e3
        t0 = min((r.published for r in published), default=0.0)
        t_end = max([self.last_answer or t0] + [r.published for r in published])
        span = max(t_end - t0, 1e-9)
        answered = sum(r.answered for r in published)
        latency = {"p50_ms": _pct(latencies, 50), "p95_ms": _pct(latencies, 95),
                   "max_ms": float(latencies.max()) if latencies.size else math.nan,
                   "mean_ms": float(latencies.mean()) if latencies.size else math.nan}
        span_bag = (published[-1].stamp - published[0].stamp) / 1e9 if len(published) > 1 else 0.0
        seg = self.seg.compute()
        dep = self.dep.compute()
        return {
            "bag": str(self.source.path),
            "mode": self.opts.mode,
            "speed": self.opts.speed,
            "topics": {"image": self.link.image_topic, "camera_info": self.link.info_topic,
                       "depth": self.link.depth_topic, "semantic": self.link.semantic_topic},
            "frames": {
                "in_bag": self.source.frame_count, "published": self.tally.published,
                "answered": answered, "dropped": self.tally.published - answered,
                "malformed": self.tally.malformed, "resent": self.tally.resent,
                "late_outputs": self.tally.late_outputs, "unmatched_outputs": self.tally.unmatched_outputs,
                "ground_truth_unreadable": self.tally.gt_unreadable,
                "ground_truth_size_mismatch": self.tally.gt_mismatch,
                "scored": self.tally.scored_frames,
            },
            "malformed_frames": self.tally.malformed_reasons,
            "latency": latency,
            "throughput_hz": answered / span if answered else 0.0,
            "input_rate_hz": (len(published) - 1) / max(published[-1].published - t0, 1e-9)
            if len(published) > 1 else math.nan,
            "recorded_rate_hz": (len(published) - 1) / span_bag if span_bag > 0 else math.nan,
            "depth_range_m": [self.opts.min_depth, self.opts.max_depth],
            "node_diagnostics": dict(self.link.diagnostics),
            "semantic": {"classes": list(classmap.CLASS_NAMES), **seg},
            "depth": dep,
            "per_frame": [
                {"index": r.index, "stamp_ns": r.stamp,
                 "published_s": None if r.published is None else r.published - t0,
                 "latency_ms": None if r.latency is None else r.latency * 1e3,
                 "answered": r.answered, "malformed": r.malformed or None, "sends": r.sends}
                for r in self.order
            ],
        }


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan




DEFAULT_DEPTH_RANGE: tuple[float, float] = (0.5, 80.0)


def resolve_depth_range(opts: ReplayOptions) -> ReplayOptions:
    """The depth metric range: given values, else the chain's own (``depth.min``/``max`` in its
    metadata.json, what offline evaluation used) when the replay starts the node, else 0.5-80 m."""
    if opts.min_depth is not None and opts.max_depth is not None:
        chosen, source = (opts.min_depth, opts.max_depth), "given"
    elif opts.model:
        from atdt_ros.artifact import ArtifactError, load_metadata

        try:
            depth = load_metadata(opts.model).depth
        except ArtifactError as exc:
            raise ReplayError(str(exc)) from exc
        chosen, source = (depth.min, depth.max), f"{opts.model}/metadata.json"
    else:
        chosen, source = DEFAULT_DEPTH_RANGE, "default (no --model to read it from)"
    low = opts.min_depth if opts.min_depth is not None else chosen[0]
    high = opts.max_depth if opts.max_depth is not None else chosen[1]
    if not low < high:
        raise ReplayError(f"depth range {low:g}-{high:g} m: the minimum must be below the maximum")
    log.info("depth metrics over %g-%g m (%s)", low, high, source)
    return dataclasses.replace(opts, min_depth=low, max_depth=high)


def replay(opts: ReplayOptions) -> dict[str, Any]:
    """Run one replay (starting the node when ``opts.model`` is set) and write its report."""
    if opts.mode not in MODES:
        raise ReplayError(f"mode {opts.mode!r} is not one of {', '.join(MODES)}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    source = BagSource(opts.bag, opts.topics)
    process = None
    link = None
    opts = resolve_depth_range(opts)
    try:
        if opts.model:
            process = start_node(opts.model, opts.namespace, opts.params_file, opts.backend,
                                 out / "node.log", opts.trust_model_code)
        link = NodeLink(opts.namespace, opts.node_name, opts.mode)
        link.connect(opts.timeout, process)
        run = Replay(opts, link, source)
        run.warm_up()
        run.run()
        return write_report(run, out)
    finally:
        if link is not None:
            link.close()
        if process is not None:
            code = stop_node(process)
            if code not in (0, -signal.SIGINT, None):
                log.warning("the node exited with status %s (log %s)", code, out / "node.log")
        source.close()
