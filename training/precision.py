"""Training precision: fp32, or bf16 (Keras' mixed_bfloat16 policy), and whether this CPU can run bf16 fast.

bf16 here means Keras' mixed_bfloat16: variables, optimizer, loss and the LSTM cell state stay float32, the
layers compute in bfloat16. On a CPU that pays off only where bfloat16 has its own instructions
(AVX512-BF16 or AMX-BF16); elsewhere TensorFlow converts every bf16 operand in software, slower than fp32,
so training falls back to fp32 and says why.
"""
from __future__ import annotations

from model_interface.cpu import BF16_CPU_FLAGS, cpu_bf16_flags

PRECISIONS = ("fp32", "bf16")
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}  # --precision -> Keras dtype policy of the layers


def effective_precision(precision: str) -> tuple[str, str | None]:
    """The precision training will run in, and why it differs from the one asked for (None if it does not).

    On a GPU bf16 is the GPU's business (cuDNN runs it); on a CPU without bfloat16 units bf16 falls back to
    fp32.
    """
    if precision != "bf16":
        return precision, None
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU") or cpu_bf16_flags():
        return precision, None
    return "fp32", ("--precision bf16: this CPU has no bfloat16 units (neither "
                    f"{' nor '.join(BF16_CPU_FLAGS)} among the flags of /proc/cpuinfo), so bf16 would be "
                    "emulated and slower than fp32; training in fp32 instead")
