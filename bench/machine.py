"""What CPU a benchmark ran on, in one line: the model, the cores and the vector and matrix units the int8 model
uses. The same code measured 3-9x apart in model time on two CPUs this machine kind was given (a Xeon with AMX, an
EPYC with AVX2 only), so every figure is read next to this line."""

from __future__ import annotations

import os
from pathlib import Path

# The instruction-set features that decide how fast the int8 ONNX model runs, best first.
FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def describe(cpuinfo: str | None = None) -> str:
    """'AMD EPYC, 2 cores, avx2 (no VNNI, no AMX)' from /proc/cpuinfo (or the text given); '? CPU' elsewhere."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = " ".join(fields.get("model name", "? CPU").split())
    flags = set(fields.get("flags", "").split())
    present = [f for f in FEATURES if f in flags]
    missing = [label for label, names in (("VNNI", ("avx512_vnni", "avx_vnni")), ("AMX", ("amx_int8",)))
               if not flags & set(names)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    units = ", ".join(present) or "no AVX2"
    if missing and flags:
        units += " (no " + ", no ".join(missing) + ")"
    return f"{model}, {cores} cores, {units}"


if __name__ == "__main__":
    print(describe())
