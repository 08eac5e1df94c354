"""The CPU description every run records, and the warning for emulated bf16."""

from __future__ import annotations

import pytest

from fedgma import machine as machine_module
from fedgma.machine import machine, native_bf16, warn_if_bf16_is_emulated


def test_bf16_instructions_are_read_from_x86_flags_only():
    assert native_bf16({"sse2", "avx2", "avx512f"}) is False  # AVX-512 without its BF16 extension
    assert native_bf16({"sse2", "avx2", "avx512f", "avx512_bf16"}) is True
    assert native_bf16({"sse2", "avx2", "amx_bf16"}) is True
    assert native_bf16({"fp", "asimd", "bf16"}) is None  # ARM: no x86 flags to tell
    assert native_bf16(set()) is None  # no /proc/cpuinfo (macOS)


@pytest.mark.parametrize("flags, warned", [("fpu sse2 avx2", True), ("fpu sse2 avx2 avx512_bf16", False), ("", False)])
def test_emulated_bf16_is_said_once_per_process(monkeypatch, capsys, flags, warned):
    monkeypatch.setattr(machine_module, "_proc_fields", lambda path: {"flags": flags})
    warn_if_bf16_is_emulated.cache_clear()
    try:
        assert warn_if_bf16_is_emulated() is warned and warn_if_bf16_is_emulated() is warned
        said = capsys.readouterr().err
        assert said.count("precision='bf16'") == (1 if warned else 0)
        assert not warned or "avx512_bf16, amx_bf16" in said and "precision='fp32'" in said
    finally:
        warn_if_bf16_is_emulated.cache_clear()


def test_machine_names_the_cpu_and_its_bf16_units():
    here = machine()
    assert here["cores"] >= 1 and here["memory_bytes"] > 0 and here["bf16-units"] in (True, False, None)
