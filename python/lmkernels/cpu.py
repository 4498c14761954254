"""Which CPU kernel path (scalar, AVX2, AVX-512, AVX-512 with VNNI, AMX) the ops use.

The best path the CPU supports is chosen at run time. `LMKERNELS_CPU_ISA=scalar|avx2|avx512|avx512_vnni|amx`
in the environment, or `set_cpu_isa` in a process, forces a lower one: useful to compare
paths and how the tests cover each of them.
"""

from __future__ import annotations

from ._native import load

_C = load()

_ISAS = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")


def cpu_isa() -> str:
    """The CPU path ops use now: ``"scalar"``, ``"avx2"``, ``"avx512"``, ``"avx512_vnni"`` or
    ``"amx"`` (ops without a kernel for a path run their best lower one there)."""
    return _C.cpu_isa()


def supported_cpu_isas() -> list[str]:
    """Every path this CPU can run, lowest first (always starts with ``"scalar"``)."""
    return list(_C.supported_cpu_isas())


def set_cpu_isa(isa: str | None) -> None:
    """Force the CPU path for this process, or go back to the default with ``None``.

    Raises ``ValueError`` for an unknown name or a path this CPU does not support.
    """
    if isa is None:
        _C.clear_cpu_isa()
        return
    if not isinstance(isa, str) or isa not in _ISAS:
        raise ValueError(f"set_cpu_isa: isa must be one of {_ISAS} or None, got {isa!r}")
    if isa not in supported_cpu_isas():
        raise ValueError(
            f"set_cpu_isa: this CPU does not support {isa!r}; supported: {supported_cpu_isas()}"
        )
    _C.set_cpu_isa(isa)
