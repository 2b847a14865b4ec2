"""The CPU line the benchmarks print beside their figures."""

from __future__ import annotations

from bench.machine import describe

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Platinum\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\nprocessor\t: 1\nmodel name\t: other\n"


def test_the_line_names_the_model_and_the_units_the_int8_model_uses_best_first():
    line = describe(XEON)
    assert line.startswith("Intel(R) Xeon(R) Platinum, ") and "cores" in line
    assert line.endswith("amx_int8, avx512_vnni, avx512f, avx2") and "(no" not in line


def test_a_cpu_without_vnni_or_amx_says_so_and_the_first_processor_counts():
    assert describe(EPYC).startswith("AMD EPYC, ")
    assert describe(EPYC).endswith("avx2 (no VNNI, no AMX)")


def test_without_cpuinfo_the_line_says_it_does_not_know():
    assert describe("").startswith("? CPU, ") and describe("").endswith("no AVX2")
