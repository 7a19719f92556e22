"""This CPU, as /proc/cpuinfo describes its first processor: where a bf16 version (metadata `precision`) is fast.

A bf16 version multiplies in bfloat16 through oneDNN, which is fast only where the CPU has bfloat16 instructions
(AVX512-BF16 or AMX-BF16); elsewhere oneDNN converts every operand in software and bf16 is slower than fp32.
Training (the fall back to fp32), export and the gateway (their warnings) and the benchmarks (the machine line
beside every figure, which also names the CPU's family, model and vector width) all read it here.
"""
from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the bfloat16 instructions
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields ({} where there is no /proc/cpuinfo to read)."""
    try:
        first = CPUINFO.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 instruction flags ([] where it has none, or where nothing tells: bf16 is then not known
    to be fast)."""
    return [flag for flag in BF16_CPU_FLAGS if flag in cpuinfo_fields().get("flags", "").split()]


BF16_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}  # /proc/cpuinfo's names -> the usual ones


def bf16_support() -> str:
    """The CPU's bfloat16 instructions ("none" where it has neither, "unknown" where nothing tells)."""
    if "flags" not in cpuinfo_fields():
        return "unknown"
    return ", ".join(BF16_NAMES[flag] for flag in cpu_bf16_flags()) or "none"


def cpu_generation() -> str:
    """Family and model numbers, which tell apart CPUs that lscpu names alike ("AMD EPYC" is Zen 3 at family 25
    model 1 and Zen 4 at model 17), and the widest vector unit, which bounds fp32 matmuls."""
    fields = cpuinfo_fields()
    if "flags" not in fields:
        return "vector units unknown"
    flags = fields["flags"].split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    if "cpu family" not in fields:
        return vector
    return f"family {fields['cpu family']} model {fields.get('model', '?')}; {vector}"
