"""This CPU read off /proc/cpuinfo's first processor: its bfloat16 units, family, model and vector width."""
import pytest

from model_interface import cpu
from model_interface.cpu import cpu_bf16_flags

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
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)
    assert cpu_bf16_flags() == found


def test_no_cpuinfo_means_no_bf16_units(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
    assert cpu_bf16_flags() == []


CPUINFO_WITH_MODEL = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
flags\t\t: fpu sse2 {flags}

processor\t: 1
vendor_id\t: {vendor}
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16
"""


@pytest.mark.parametrize("vendor, family, model, flags, generation, bf16", [
    ("AuthenticAMD", 25, 1, "avx2 fma", "family 25 model 1; AVX2, no AVX-512", "none"),  # Zen 3
    ("AuthenticAMD", 25, 17, "avx2 avx512f avx512_bf16", "family 25 model 17; AVX-512", "AVX512-BF16"),  # Zen 4
    ("GenuineIntel", 6, 143, "avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "family 6 model 143; AVX-512",
     "AVX512-BF16, AMX-BF16"),
    ("GenuineIntel", 6, 58, "avx", "family 6 model 58; no AVX2", "none"),
])
def test_the_first_processor_is_described(vendor, family, model, flags, generation, bf16, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_WITH_MODEL.format(vendor=vendor, family=family, model=model, name="CPU", flags=flags))
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)
    assert cpu.cpu_generation() == generation
    assert cpu.bf16_support() == bf16  # the first processor's flags, not the second's


def test_no_cpuinfo_describes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
    assert cpu.bf16_support() == "unknown" and cpu.cpu_generation() == "vector units unknown"
