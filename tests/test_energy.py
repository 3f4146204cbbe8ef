"""Energy meters: RAPL on a scripted sysfs tree, NVML against a fake pynvml, the CPU-time estimate."""
import builtins
import os
import subprocess
import sys
import time
import types

import pytest

from edge_downscale.runtime.energy import (
    METERS, EnergyUnavailableError, EstimatedMeter, Measurement, NvmlMeter, RaplMeter, auto_meter,
    energy_fields,
)


# ----------------------------------------------------------------------------------------- RAPL

def make_zone(d, name, energy_uj, max_range=None):
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def set_uj(zone_dir, value):
    (zone_dir / "energy_uj").write_text(f"{value}\n")


@pytest.fixture
def rapl_tree(tmp_path):
    """intel-rapl:0 (package-0) with a nested core sub-zone, like /sys/class/powercap."""
    root = tmp_path / "powercap"
    pkg = make_zone(root / "intel-rapl:0", "package-0", 1_000_000, max_range=262_143_328_850)
    core = make_zone(pkg / "intel-rapl:0:0", "core", 500_000, max_range=262_143_328_850)
    (root / "intel-rapl").mkdir()  # the control-type directory: no energy_uj
    return root, pkg, core


def test_rapl_reads_exact_joules_and_ignores_subzones(rapl_tree):
    root, pkg, core = rapl_tree
    m = RaplMeter(root=root)
    assert m.available(), m.reason
    assert [z.name for z in m.zones()] == ["package-0"]
    tok = m.start()
    set_uj(pkg, 1_000_000 + 2_500_000)  # +2.5 J on the package
    set_uj(core, 500_000 + 9_000_000)  # the core sub-zone moves too: must not be added
    r = m.stop(tok)
    assert r.source == "rapl" and r.measured
    assert r.joules == pytest.approx(2.5)
    assert r.seconds >= 0


def test_rapl_wraparound_uses_max_range(tmp_path):
    rng = 262_143_328_850
    pkg = make_zone(tmp_path / "intel-rapl:0", "package-0", rng - 1_000_000, max_range=rng)
    m = RaplMeter(root=tmp_path)
    tok = m.start()
    set_uj(pkg, 3_000_000)  # wrapped: (rng - (rng - 1e6)) + 3e6 = 4e6 uJ
    r = m.stop(tok)
    assert r.joules == pytest.approx(4.0)
    assert r.detail["wrapped"] == ["package-0"]


def test_rapl_wraparound_without_range_is_unmeasured_not_negative(tmp_path):
    pkg = make_zone(tmp_path / "intel-rapl:0", "package-0", 5_000_000)  # no max_energy_range_uj
    m = RaplMeter(root=tmp_path)
    tok = m.start()
    set_uj(pkg, 1_000_000)
    r = m.stop(tok)
    assert r.joules is None and "wrapped" in r.detail["error"]
    assert r.grams_co2(400) is None


def test_rapl_sums_two_packages_including_amd_naming(tmp_path):
    p0 = make_zone(tmp_path / "intel-rapl:0", "package-0", 10, max_range=10**12)
    p1 = make_zone(tmp_path / "amd-rapl:1", "package-1", 20, max_range=10**12)
    make_zone(tmp_path / "intel-rapl:2", "psys", 0, max_range=10**12)  # platform zone: not a package
    m = RaplMeter(root=tmp_path)
    tok = m.start()
    set_uj(p0, 10 + 1_000_000)
    set_uj(p1, 20 + 3_000_000)
    r = m.stop(tok)
    assert r.joules == pytest.approx(4.0)
    assert r.detail["zones"] == {"package-0": pytest.approx(1.0), "package-1": pytest.approx(3.0)}


def test_rapl_permission_denied_is_reported(rapl_tree, monkeypatch):
    # Tests run as root, where chmod 000 does not block reads: simulate the kernel's refusal.
    root, pkg, _ = rapl_tree
    real_open = builtins.open

    def guarded_open(path, *a, **k):
        if os.fspath(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded_open)
    m = RaplMeter(root=root)
    assert not m.available()
    assert "permission denied" in m.reason and "CVE-2020-8694" in m.reason
    assert str(pkg / "energy_uj") in m.reason
    with pytest.raises(EnergyUnavailableError, match="CVE-2020-8694"):
        m.start()
    chosen = auto_meter(prefer=("rapl",), root=root)
    assert isinstance(chosen, EstimatedMeter)
    assert "CVE-2020-8694" in chosen.fallback_reasons["rapl"]


def test_rapl_missing_root_or_no_package(tmp_path):
    m = RaplMeter(root=tmp_path / "nope")
    assert not m.available() and "no " in m.reason and "nope" in m.reason
    make_zone(tmp_path / "intel-rapl:0:0", "core", 1, max_range=10)
    m2 = RaplMeter(root=tmp_path)
    assert not m2.available() and "package" in m2.reason


# ----------------------------------------------------------------------------------------- NVML

def fake_pynvml(energy_mj, power_mw):
    """A stand-in for the pynvml module (no GPU here): counters read from scripted iterators."""
    energy_it, power_it = iter(energy_mj), iter(power_mw)
    calls = []
    mod = types.ModuleType("pynvml")
    mod.nvmlInit = lambda: calls.append("init")
    mod.nvmlShutdown = lambda: calls.append("shutdown")
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    mod.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(energy_it)
    mod.nvmlDeviceGetPowerUsage = lambda h: next(power_it)
    mod.calls = calls
    return mod


def test_nvml_without_pynvml_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    m = NvmlMeter()
    assert not m.available()
    assert "edge-downscale[gpu]" in m.reason and "pynvml" in m.reason


def test_nvml_init_failure_is_a_reason(monkeypatch):
    mod = fake_pynvml([], [])

    def boom():
        raise RuntimeError("NVML Shared Library Not Found")

    mod.nvmlInit = boom
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    m = NvmlMeter()
    assert not m.available() and "Library Not Found" in m.reason


def test_nvml_counter_delta(monkeypatch):
    e0, e1 = 123_456_000, 123_456_000 + 7_250  # mJ
    mod = fake_pynvml([e0, e1], [50_000, 60_000])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    m = NvmlMeter(device_index=0)
    with m.measure() as r:
        pass
    assert r.source == "nvml" and r.detail["method"] == "counter"
    assert r.joules == pytest.approx((e1 - e0) / 1000.0)
    m.close()
    assert mod.calls == ["init", "shutdown"]


def test_nvml_short_window_falls_back_to_power_x_time(monkeypatch):
    mod = fake_pynvml([5_000, 5_000], [80_000, 100_000])  # counter unchanged; 80 W then 100 W
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    m = NvmlMeter()
    tok = m.start()
    time.sleep(0.02)
    r = m.stop(tok)
    assert r.detail["method"] == "power_x_time"
    assert r.detail["power_w"] == pytest.approx(90.0)
    assert r.joules == pytest.approx(90.0 * r.seconds)
    assert r.joules > 0 and r.seconds >= 0.02


def test_auto_meter_prefers_available_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], []))
    m = auto_meter(prefer=("nvml", "rapl", "estimated"), device_index=1)
    assert isinstance(m, NvmlMeter) and m.device_index == 1 and m.fallback_reasons == {}


# ------------------------------------------------------------------------------------ estimated

def burn(seconds):
    t_end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < t_end:
        x += 1
    return x


def test_estimated_tracks_cpu_time():
    m = EstimatedMeter(watts_per_core=12.0)
    p0 = time.process_time()
    with m.measure() as r:
        burn(0.2)
    cpu_independent = time.process_time() - p0
    assert r.source == "estimated" and not r.measured
    assert r.joules > 0
    assert r.detail["cpu_seconds"] == pytest.approx(cpu_independent, abs=0.05)
    assert r.joules == pytest.approx(r.detail["cpu_seconds"] * 12.0)
    assert r.joules == pytest.approx(cpu_independent * 12.0, abs=0.05 * 12.0)


def test_estimated_idle_watts_and_validation():
    m = EstimatedMeter(watts_per_core=0.0, idle_watts=5.0)
    tok = m.start()
    time.sleep(0.05)
    r = m.stop(tok)
    assert r.joules == pytest.approx(5.0 * r.seconds)
    with pytest.raises(ValueError):
        EstimatedMeter(watts_per_core=-1)


# -------------------------------------------------------------------------------- auto + fields

def test_auto_meter_on_this_machine_explains_fallbacks(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed here; make it so everywhere
    m = auto_meter(root=tmp_path / "no-powercap", watts_per_core=7.0)
    assert isinstance(m, EstimatedMeter) and m.watts_per_core == 7.0
    assert set(m.fallback_reasons) == {"nvml", "rapl"}
    assert "edge-downscale[gpu]" in m.fallback_reasons["nvml"]
    assert "no-powercap" in m.fallback_reasons["rapl"]


def test_auto_meter_default_root_here():
    m = auto_meter()
    if not os.path.isdir("/sys/class/powercap"):
        assert isinstance(m, EstimatedMeter)
        assert "rapl" in m.fallback_reasons and "nvml" in m.fallback_reasons
    assert set(METERS) == {"rapl", "nvml", "estimated"}


def test_auto_meter_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="available"):
        auto_meter(prefer=("zeus",))
    with pytest.raises(ValueError, match="wats"):
        auto_meter(wats_per_core=3)


def test_grams_co2_and_energy_fields():
    m = Measurement(joules=3.6e6, seconds=1.0, source="rapl")
    assert m.grams_co2(400.0) == pytest.approx(400.0)
    assert m.grams_co2(0.0) == 0.0
    assert energy_fields(m, grid_g_per_kwh=250.0) == {
        "joules": 3.6e6, "energy_source": "rapl", "grams_co2": pytest.approx(250.0)}
    none = energy_fields(Measurement(None, 1.0, "nvml"))
    assert none == {"joules": None, "energy_source": "nvml", "grams_co2": None}
    with pytest.raises(ValueError):
        m.grams_co2(-1)


def test_energy_import_leaves_torch_unimported():
    code = (
        "import sys\n"
        "import edge_downscale.runtime.energy\n"
        "heavy = [m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
