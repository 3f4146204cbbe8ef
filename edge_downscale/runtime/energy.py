"""Energy meters: how many joules did this request (or benchmark window) cost?

Three sources, in the order :func:`auto_meter` tries them by default:

* ``nvml``      -- the GPU's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta+).
                   It updates about every 100 ms, so a short window can read 0 J: then we fall back
                   to average power (``nvmlDeviceGetPowerUsage``, mW) x elapsed time and say so in
                   ``detail["method"]``.
* ``rapl``      -- Intel/AMD RAPL package counters under ``/sys/class/powercap``. Whole-socket, not
                   per-process; the counters wrap at ``max_energy_range_uj``; and since CVE-2020-8694
                   ``energy_uj`` is readable by root only on most kernels. Absent on most VMs.
* ``estimated`` -- process CPU seconds x an assumed wattage per busy core. A labelled guess.

Peers (CodeCarbon, pyJoules...) fail *silently* here: a TDP guess dressed as a measurement, a
negative reading after a wraparound, 0 J for a short GPU window. This module instead labels every
figure with its ``source`` and makes the meter it picked say why the better ones were not used
(``meter.fallback_reasons``). ``Measurement.joules is None`` is the explicit "unmeasurable" state.

Stdlib + psutil only (pynvml imported lazily): the runtime never imports torch.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from ..config import registrar
from ..errors import ConfigError, EnergyUnavailableError, MissingDependencyError, require

JOULES_PER_KWH = 3.6e6


@dataclass
class Measurement:
    """Energy over one window. ``joules is None`` means "could not be measured" (see ``detail``)."""

    joules: float | None
    seconds: float
    source: str  # "rapl" | "nvml" | "estimated"
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """True for a hardware reading (RAPL/NVML), False for an estimate or no figure."""
        return self.joules is not None and self.source in ("rapl", "nvml")

    @property
    def watts(self) -> float | None:
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds

    def grams_co2(self, grid_g_per_kwh: float) -> float | None:
        """CO2-equivalent grams at a grid intensity in g/kWh (world average is ~400-480)."""
        if grid_g_per_kwh < 0:
            raise ConfigError(f"grid intensity must be >= 0 g/kWh, got {grid_g_per_kwh}")
        if self.joules is None:
            return None
        return self.joules / JOULES_PER_KWH * grid_g_per_kwh


class EnergyMeter(abc.ABC):
    """One energy source. Subclasses implement :meth:`_probe`, :meth:`start` and :meth:`stop`.

    ``available()`` never raises: when it returns False, ``reason`` says why and what to do.
    """

    name: ClassVar[str] = "meter"
    source: ClassVar[str] = "estimated"

    def __init__(self) -> None:
        self.reason: str | None = None  # why not available (None when it is)
        # Filled by auto_meter: {meter name: why it was not chosen}.
        self.fallback_reasons: dict[str, str] = {}

    def available(self) -> bool:
        """Whether this meter can measure here; sets ``self.reason`` when not."""
        self.reason = self._probe()
        return self.reason is None

    @abc.abstractmethod
    def _probe(self) -> str | None:
        """None when the meter works here, else a one-line reason (what is missing, what to do)."""

    @abc.abstractmethod
    def start(self) -> Any:
        """Take the opening reading; returns an opaque token for :meth:`stop`."""

    @abc.abstractmethod
    def stop(self, token: Any) -> Measurement:
        """Take the closing reading and return the energy since ``start``."""

    def _require_available(self) -> None:
        if not self.available():
            raise EnergyUnavailableError(f"{self.name} meter unavailable: {self.reason}")

    @contextlib.contextmanager
    def measure(self) -> Iterator[Measurement]:
        """``with meter.measure() as m: ...`` -- ``m`` is filled in on exit (also on an exception)."""
        m = Measurement(joules=None, seconds=0.0, source=self.source)
        token = self.start()
        try:
            yield m
        finally:
            r = self.stop(token)
            m.joules, m.seconds, m.source, m.detail = r.joules, r.seconds, r.source, r.detail

    def close(self) -> None:
        """Release native handles (idempotent)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r})"


# name -> class, filled by @register_meter.
METERS: dict[str, type[EnergyMeter]] = {}


register_meter = registrar(METERS, "energy meter")


# --------------------------------------------------------------------------- RAPL (sysfs powercap)

def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_int(path: str) -> int:
    return int(_read_text(path))


@dataclass(frozen=True)
class RaplZone:
    path: str  # zone directory
    name: str  # e.g. "package-0"
    max_range_uj: int | None  # counter wraps at this value; None if unreadable

    @property
    def energy_file(self) -> str:
        return os.path.join(self.path, "energy_uj")


@register_meter
class RaplMeter(EnergyMeter):
    """Sum of the package-level RAPL counters (``intel-rapl:N``; ``amd-rapl`` likewise).

    Only zones whose ``name`` starts with "package" are counted: the sub-zones (core, uncore, dram)
    are parts of a package (counting them too would double count), and ``psys`` covers the whole
    platform. ``intel-rapl-mmio`` zones are a second interface onto the same package counter and
    are skipped for the same reason. A window longer than one full counter range (hundreds of kJ:
    tens of minutes at full power) can wrap twice, which no reader can detect: measure shorter windows.
    """

    name = "rapl"
    source = "rapl"

    def __init__(self, root: str | os.PathLike = "/sys/class/powercap"):
        super().__init__()
        self.root = os.fspath(root)

    def zones(self) -> list[RaplZone]:
        """Package zones under ``root`` (depth <= 3, following the sysfs symlinks, deduplicated)."""
        found: dict[str, RaplZone] = {}
        stack: list[tuple[str, int]] = [(self.root, 0)]
        while stack:
            d, depth = stack.pop()
            try:
                entries = sorted(os.listdir(d))
            except OSError:
                continue
            if "energy_uj" in entries and "name" in entries and "mmio" not in os.path.basename(d):
                try:
                    zname = _read_text(os.path.join(d, "name"))
                except OSError:
                    zname = ""
                real = os.path.realpath(d)
                if zname.startswith("package") and real not in found:
                    try:
                        rng: int | None = _read_int(os.path.join(d, "max_energy_range_uj"))
                    except (OSError, ValueError):
                        rng = None
                    found[real] = RaplZone(d, zname, rng)
            if depth < 3:
                for e in entries:
                    p = os.path.join(d, e)
                    if (e.startswith("intel-rapl") or e.startswith("amd-rapl")) and os.path.isdir(p):
                        stack.append((p, depth + 1))
        return sorted(found.values(), key=lambda z: z.path)

    def _probe(self) -> str | None:
        if not os.path.isdir(self.root):
            return f"no {self.root} (no RAPL powercap interface: a VM, or not Intel/AMD?)"
        zones = self.zones()
        if not zones:
            return f"no package-level RAPL zone (name 'package-*' with energy_uj) under {self.root}"
        for z in zones:
            try:
                _read_int(z.energy_file)
            except PermissionError:
                return (f"permission denied reading {z.energy_file} (root-only since CVE-2020-8694): "
                        "run as root or grant read access")
            except (OSError, ValueError) as e:
                return f"cannot read {z.energy_file}: {e}"
        return None

    def start(self) -> Any:
        self._require_available()
        zones = self.zones()
        reads = {z.path: _read_int(z.energy_file) for z in zones}
        return {"t": time.perf_counter(), "zones": zones, "reads": reads}

    def stop(self, token: Any) -> Measurement:
        t1 = time.perf_counter()
        seconds = t1 - token["t"]
        total_uj = 0
        per_zone: dict[str, float] = {}
        wraps: list[str] = []
        for z in token["zones"]:
            try:
                end = _read_int(z.energy_file)
            except (OSError, ValueError) as e:
                return Measurement(None, seconds, self.source, {"error": f"cannot read {z.energy_file}: {e}"})
            delta = end - token["reads"][z.path]
            if delta < 0:  # the counter wrapped (once, we assume: see the class docstring)
                if z.max_range_uj is None:
                    return Measurement(None, seconds, self.source, {
                        "error": f"{z.name} counter wrapped and max_energy_range_uj is unreadable"})
                delta += z.max_range_uj
                wraps.append(z.name)
            per_zone[z.name] = delta / 1e6
            total_uj += delta
        detail: dict[str, Any] = {"zones": per_zone, "scope": "whole package(s), not per process"}
        if wraps:
            detail["wrapped"] = wraps
        return Measurement(total_uj / 1e6, seconds, self.source, detail)


# --------------------------------------------------------------------------- NVML (NVIDIA GPU)

@register_meter
class NvmlMeter(EnergyMeter):
    """One NVIDIA GPU's energy counter (mJ since driver load), with a power x time fallback.

    The counter updates roughly every 100 ms: over a shorter window it can be unchanged (0 J). Then,
    or when the GPU has no counter (pre-Volta), we use the mean of the power readings at start and
    stop (mW) x elapsed seconds and set ``detail["method"] = "power_x_time"``. Whole GPU, not per
    process.
    """

    name = "nvml"
    source = "nvml"

    def __init__(self, device_index: int = 0):
        super().__init__()
        self.device_index = device_index
        self._nvml: Any = None
        self._handle: Any = None

    def _ensure(self) -> None:
        if self._handle is not None:
            return
        nvml = require("pynvml", "gpu")
        nvml.nvmlInit()
        self._handle = nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        self._nvml = nvml

    def _probe(self) -> str | None:
        try:
            self._ensure()
        except MissingDependencyError:
            return "pynvml not installed: pip install 'edge-downscale[gpu]'"
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _InvalidArgument...
            return f"NVML unusable (no NVIDIA driver/GPU {self.device_index}?): {type(e).__name__}: {e}"
        return None

    def _energy_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # not supported on this GPU
            return None

    def _power_w(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except Exception:
            return None

    def start(self) -> Any:
        self._require_available()
        return {"t": time.perf_counter(), "mj": self._energy_mj(), "w": self._power_w()}

    def stop(self, token: Any) -> Measurement:
        mj1, w1 = self._energy_mj(), self._power_w()
        seconds = time.perf_counter() - token["t"]
        detail: dict[str, Any] = {"device_index": self.device_index, "scope": "whole GPU, not per process"}
        mj0 = token["mj"]
        if mj0 is not None and mj1 is not None and mj1 - mj0 > 0:
            detail["method"] = "counter"
            return Measurement((mj1 - mj0) / 1000.0, seconds, self.source, detail)
        watts = [w for w in (token["w"], w1) if w is not None]
        if not watts:
            detail["error"] = "neither the energy counter nor power usage is readable"
            return Measurement(None, seconds, self.source, detail)
        detail["method"] = "power_x_time"
        detail["why"] = ("energy counter unchanged (window shorter than its ~100 ms update?)"
                         if mj0 is not None and mj1 is not None else "no energy counter on this GPU")
        detail["power_w"] = sum(watts) / len(watts)
        return Measurement(detail["power_w"] * seconds, seconds, self.source, detail)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml = self._handle = None


# --------------------------------------------------------------------------- estimate from CPU time

@register_meter
class EstimatedMeter(EnergyMeter):
    """joules = this process's CPU seconds (user + system, all threads) x ``watts_per_core``
    + ``idle_watts`` x wall seconds.

    The default of 10 W per fully busy core is an assumption, not a measurement: roughly a desktop
    CPU's TDP over its cores (65 W / 6 cores ~ 11 W); a 15 W laptop chip is nearer 3-4 W per core
    and a server core 5-10 W. Set it for your device. ``idle_watts`` (default 0) attributes a share
    of the machine's baseline draw to the window. Always available, always labelled "estimated".
    """

    name = "estimated"
    source = "estimated"

    def __init__(self, watts_per_core: float = 10.0, idle_watts: float = 0.0):
        super().__init__()
        if watts_per_core < 0 or idle_watts < 0:
            raise ConfigError(f"watts must be >= 0, got watts_per_core={watts_per_core}, idle_watts={idle_watts}")
        self.watts_per_core = float(watts_per_core)
        self.idle_watts = float(idle_watts)

    def _probe(self) -> str | None:
        return None

    @staticmethod
    def _cpu_seconds() -> float:
        """User + system CPU seconds of every thread of this process (native ones included).

        ``time.process_time`` reads CLOCK_PROCESS_CPUTIME_ID (nanosecond resolution); psutil's
        ``cpu_times`` counts whole clock ticks (10 ms), which reads 0 J for a short request.
        """
        return time.process_time()

    def start(self) -> Any:
        return {"t": time.perf_counter(), "cpu": self._cpu_seconds()}

    def stop(self, token: Any) -> Measurement:
        cpu = self._cpu_seconds() - token["cpu"]
        seconds = time.perf_counter() - token["t"]
        joules = cpu * self.watts_per_core + self.idle_watts * seconds
        return Measurement(joules, seconds, self.source, {
            "cpu_seconds": cpu, "watts_per_core": self.watts_per_core, "idle_watts": self.idle_watts,
            "assumption": "CPU seconds x assumed watts per busy core; not a measurement",
        })


# --------------------------------------------------------------------------- choosing a meter

def auto_meter(prefer: tuple[str, ...] | list[str] = ("nvml", "rapl", "estimated"), **options: Any) -> EnergyMeter:
    """The first available meter in ``prefer``, else the CPU-time estimator.

    ``options`` go to whichever meter constructors accept them (``root=`` for RAPL,
    ``device_index=`` for NVML, ``watts_per_core=``/``idle_watts=`` for the estimate). The returned
    meter's ``fallback_reasons`` says why each meter tried before it was not used.
    """
    unknown = [n for n in prefer if n not in METERS]
    if unknown:
        raise ConfigError(f"unknown energy meter(s) {unknown}; available: {', '.join(sorted(METERS))}")
    accepted = {n: set(inspect.signature(c.__init__).parameters) - {"self"} for n, c in METERS.items()}
    stray = [k for k in options if not any(k in a for a in accepted.values())]
    if stray:
        raise ConfigError(f"no energy meter takes option(s) {stray}")

    def build(n: str) -> EnergyMeter:
        return METERS[n](**{k: v for k, v in options.items() if k in accepted[n]})

    reasons: dict[str, str] = {}
    for n in prefer:
        meter = build(n)
        if meter.available():
            meter.fallback_reasons = reasons
            return meter
        reasons[n] = meter.reason or "unavailable"
        meter.close()
    meter = build("estimated")
    meter.fallback_reasons = reasons
    return meter


def energy_fields(measurement: Measurement | None, grid_g_per_kwh: float = 400.0) -> dict[str, Any]:
    """Flat fields for a usage record: joules, energy_source, grams_co2 (None when unmeasured)."""
    if measurement is None:
        return {"joules": None, "energy_source": None, "grams_co2": None}
    return {
        "joules": measurement.joules,
        "energy_source": measurement.source,
        "grams_co2": measurement.grams_co2(grid_g_per_kwh),
    }


__all__ = [
    "METERS", "EnergyMeter", "EnergyUnavailableError", "EstimatedMeter", "Measurement", "NvmlMeter",
    "RaplMeter", "RaplZone", "auto_meter", "energy_fields", "register_meter",
]
