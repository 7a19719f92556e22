"""What every benchmark records beside its figures: the CPU, its vector and bfloat16 units and how many cores."""
import os
import platform
import subprocess

from model_interface.cpu import bf16_support, cpu_generation


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model} ({cpu_generation()}; bf16: {bf16_support()}), {os.cpu_count()} cores"
