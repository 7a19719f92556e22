"""--precision: which CPUs run bf16, and the fall back to fp32 where they cannot."""
import pytest

from training import precision
from training.precision import cpu_bf16_flags, effective_precision

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse2 avx2 avx512f avx512_vnni {extra}
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse2 avx2 avx512f avx512_vnni {extra}
"""


@pytest.mark.parametrize("extra, found", [
    ("avx512_bf16", ["avx512_bf16"]),
    ("amx_bf16 amx_tile", ["amx_bf16"]),
    ("avx512_bf16 amx_bf16", ["avx512_bf16", "amx_bf16"]),
    ("avx512_fp16", []),  # another 16-bit format's instructions are not bfloat16's
    ("", []),
])
def test_bf16_flags_are_read_from_cpuinfo(extra, found, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert cpu_bf16_flags() == found


def test_no_cpuinfo_means_no_bf16_units(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert cpu_bf16_flags() == []


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
