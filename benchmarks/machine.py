"""What every benchmark records beside its figures: the CPU, its bfloat16 units and how many cores."""
import os
import platform
import subprocess
from pathlib import Path

BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}  # /proc/cpuinfo's names -> the usual ones


def bf16_support() -> str:
    """The CPU's bfloat16 instructions, as /proc/cpuinfo lists them ("none" where it has neither)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [name for flag, name in BF16_FLAGS.items() if flag in flags.split()]
    return ", ".join(found) or "none"


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model} (bf16: {bf16_support()}), {os.cpu_count()} cores"
