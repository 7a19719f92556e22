"""--precision: the fall back to fp32 on a CPU without bf16 units (which CPUs have them: test_model_interface_cpu)."""
from training import precision
from training.precision import effective_precision


def test_bf16_falls_back_to_fp32_without_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    chosen, why = effective_precision("bf16")
    assert chosen == "fp32"
    assert "--precision bf16" in why and "no bfloat16 units" in why and "avx512_bf16" in why and "fp32" in why


def test_bf16_stays_bf16_with_bf16_units_and_fp32_stays_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert effective_precision("bf16") == ("bf16", None)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    assert effective_precision("fp32") == ("fp32", None)
