"""XLA compile options shared by the jitted engines (compile time is a first-class cost).

On XLA:CPU, the one-scan Markov analysis and the chunked tree kernels compile in about 0.65 s of
CPU time instead of 1.6 s without the new fusion emitters and at LLVM optimization level 1, with
the same run time (measured side by side on the 2-core CPU at T=4096, V=64, S=16). Other
backends get XLA's defaults.
"""

from __future__ import annotations

import os

__all__ = ["CACHE_ENV", "CPU_COMPILER_OPTIONS", "compiler_options", "enable_compilation_cache"]

CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def compiler_options(backend: str) -> dict | None:
    """The ``compiler_options`` to pass to ``jax.jit`` for ``backend`` (``"cpu"``, ``"gpu"``...)."""
    return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else None


#: Environment variable naming the folder of JAX's persistent compilation cache ("off" disables it).
CACHE_ENV = "HARM_HORIZON_JAX_CACHE"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache (``$HARM_HORIZON_JAX_CACHE`` or
    ``~/.cache/harm-horizon/jax``); returns the folder, or None when disabled.

    Compiling the small programs of a run takes longer than running them on a CPU; the cache lets
    the processes of a sweep, and later commands, reuse what an earlier run compiled.
    """
    folder = os.environ.get(CACHE_ENV)
    if folder is not None and folder.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    if folder is None:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(root, "harm-horizon", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder
