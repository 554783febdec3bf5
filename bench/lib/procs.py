"""Sampling the processes under one root (a sweep's driver and its Ray workers) with psutil.

Ray starts its raylet from the driver and the trial workers from the raylet, so
every process of a sweep descends from the driver: sampling that tree, and only
that tree, keeps other users' Ray sessions on a shared machine out of the numbers.
A Tune trial runs in a worker whose process title is ``ray::ImplicitFunc...``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

TRIAL_TITLE = "ImplicitFunc"


@dataclass
class ProcTrace:
    """One process: its title, creation time, and (time, cpu seconds) / memory samples.

    Ray pre-starts idle workers, so a trial starts when its worker takes the
    trial's title (``trial_since``), not when the process was created; the CPU it
    spent before (``cpu_before``: importing Ray while idle) is not the trial's.
    """

    pid: int
    title: str
    created: float
    trial_since: float | None = None
    cpu_before: float = 0.0
    cpu: list[tuple[float, float]] = field(default_factory=list)   # (wall time, user + system s)
    peak: dict[str, float] = field(default_factory=dict)           # rss / uss / pss bytes, max over samples

    @property
    def is_trial(self) -> bool:
        return self.trial_since is not None

    @property
    def trial_cpu(self) -> float:
        return (self.cpu[-1][1] - self.cpu_before) if self.is_trial and self.cpu else 0.0

    @property
    def last_seen(self) -> float:
        return self.cpu[-1][0] if self.cpu else self.created

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by wall time ``t`` (0 before the first sample, the latest sample after)."""
        used = 0.0
        for when, value in self.cpu:
            if when > t:
                break
            used = value
        return used


def rollup(pid: int) -> dict[str, int]:
    """``anon``: the process's anonymous pages (heap, tensors it allocated: where a copy of the data
    would live), and ``shmem_pss``: its share of shared-memory pages (the object store), in bytes."""
    fields = {"Anonymous:": "anon", "Pss_Shmem:": "shmem_pss"}
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, *rest = line.split()
                if key in fields:
                    out[fields[key]] = int(rest[0]) * 1024
    except OSError:
        pass
    return out


class TreeSampler:
    """Background thread sampling every descendant of ``root_pid`` each ``interval`` seconds.

    ``memory=True`` also reads USS/PSS and the anonymous / shared-memory split
    (``/proc/PID/smaps_rollup``) of trial workers.
    A process that exits between two samples loses at most ``interval`` s of CPU,
    so utilisation computed from these traces errs low, never high.
    """

    def __init__(self, root_pid: int, interval: float = 0.2, memory: bool = False):
        self.root, self.interval, self.memory = psutil.Process(root_pid), interval, memory
        self.traces: dict[tuple[int, float], ProcTrace] = {}
        self.machine: list[tuple[float, float]] = []  # (wall time, busy CPU s of the whole machine)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        m = psutil.cpu_times()
        self.machine.append((time.time(), sum(m) - m.idle - getattr(m, "iowait", 0.0)))
        try:
            procs = self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    trace = self.traces.get(key)
                    if trace is None:
                        trace = self.traces[key] = ProcTrace(p.pid, "", key[1])
                    t = p.cpu_times()
                    now = time.time()
                    if not trace.is_trial:  # the title changes when an idle worker becomes a trial's actor
                        trace.title = " ".join(p.cmdline())[:200]
                        if TRIAL_TITLE in trace.title:
                            # first seen already as a trial: count it from its creation, start-up included
                            trace.trial_since = now if trace.cpu else trace.created
                            trace.cpu_before = trace.cpu[-1][1] if trace.cpu else 0.0
                    if self.memory and trace.is_trial:
                        m = p.memory_full_info()
                        mem = {"rss": m.rss, "uss": m.uss, "pss": m.pss, **rollup(p.pid)}
                        trace.peak = {**trace.peak, **{k: max(v, trace.peak.get(k, 0)) for k, v in mem.items()}}
                    trace.cpu.append((now, t.user + t.system))
            except psutil.Error:  # exited while being read
                continue

    def machine_busy(self, start: float, end: float) -> float:
        """Busy CPU seconds of the whole machine (every user's processes) between two sampled times."""
        def at(t: float) -> float:
            return max((v for when, v in self.machine if when <= t), default=self.machine[0][1])
        return at(end) - at(start)

    def trials(self) -> list[ProcTrace]:
        return [t for t in self.traces.values() if t.is_trial]
