"""benchmarks/benchmark.py's theoretical FMA peak, on hand-computed /proc/cpuinfo cases."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from paths import REPO as ROOT


@pytest.fixture(scope="module")
def benchmark():
    if "panet_benchmark" in sys.modules:
        return sys.modules["panet_benchmark"]
    spec = importlib.util.spec_from_file_location(
        "panet_benchmark", ROOT / "benchmarks" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["panet_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def cpuinfo(vendor: str, family: int, mhz: float, flags: str) -> str:
    return (
        f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: test cpu\n"
        f"cpu MHz\t\t: {mhz}\nflags\t\t: fpu sse {flags}\n"
    )


def test_intel_avx512(benchmark):
    peak = benchmark.cpu_peak(cpuinfo("GenuineIntel", 6, 2000.0, "fma avx2 avx512f"), cores=4)
    assert peak["peak_flops_per_s"] == pytest.approx(4 * 2.0e9 * 2 * 16 * 2)  # 512 GFLOP/s


def test_zen4_avx512_runs_on_256_bit_datapaths(benchmark):
    info = cpuinfo("AuthenticAMD", 25, 2596.134, "fma avx2 avx512f")
    peak = benchmark.cpu_peak(info, cores=2)
    assert peak["lanes"] == 8
    assert peak["peak_flops_per_s"] == pytest.approx(2 * 2.596134e9 * 2 * 8 * 2)  # 166 GFLOP/s


def test_a_faster_measured_matmul_raises_the_clock(benchmark):
    """A hypervisor's 'cpu MHz' is the base clock; a matmul at 200 GFLOP/s on 2 cores x 32
    FLOP/cycle proves at least 3.125 GHz, so the peak is at least 200 GFLOP/s, not 166."""
    info = cpuinfo("AuthenticAMD", 25, 2596.134, "fma avx2 avx512f")
    peak = benchmark.cpu_peak(info, cores=2, measured_flops=200e9)
    assert peak["mhz"] == pytest.approx(3125.0)
    assert peak["nominal_mhz"] == pytest.approx(2596.134)
    assert peak["peak_flops_per_s"] == pytest.approx(200e9)
    assert "at least" in peak["derivation"] and "2.596 GHz" in peak["derivation"]
    slower = benchmark.cpu_peak(info, cores=2, measured_flops=100e9)
    assert slower["peak_flops_per_s"] == pytest.approx(2 * 2.596134e9 * 32)
    assert "at least" not in slower["derivation"]


def test_sse_only(benchmark):
    peak = benchmark.cpu_peak(cpuinfo("GenuineIntel", 6, 1000.0, ""), cores=1)
    assert peak["peak_flops_per_s"] == pytest.approx(1e9 * 2 * 4 * 2)
