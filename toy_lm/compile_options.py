"""XLA compile options shared by the jitted engines (compile time is a first-class cost).

On XLA:CPU, the one-scan Markov analysis and the chunked tree kernels compile in about 0.65 s of
CPU time instead of 1.6 s without the new fusion emitters and at LLVM optimization level 1, with
the same run time (measured side by side on the 2-core CPU at T=4096, V=64, S=16). Other
backends get XLA's defaults.

Where the installed XLA has them (jaxlib 0.10 does, 0.7 does not), XLA:CPU's YNNPACK library
fusions are turned off too (:data:`NO_LIBRARY_FUSIONS`): XLA hands reductions to YNNPACK, which
costs more than it saves on this project's small arrays. Measured side by side in one process on
the 2-core CPU, one thread: the ``quick`` preset's vectorized alignment step 107 -> 80 us per run
with chunks of 4 runs and 79 -> 46 us with chunks of 16; the tree's backward chunk kernel 10-20%
faster.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterator

__all__ = [
    "CACHE_ENV",
    "CPU_COMPILER_OPTIONS",
    "NO_LIBRARY_FUSIONS",
    "ONE_OFF_CPU_COMPILER_OPTIONS",
    "ONE_OFF_XLA_FLAGS",
    "compiler_options",
    "compiling_in_turn",
    "enable_compilation_cache",
    "one_off_compiles",
    "one_off_jit",
    "supported_options",
    "with_one_off_flags",
]

CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
#: For programs run once or a few times per process (measurements), LLVM optimization level 0:
#: the base model's measurements of the ``quick`` preset compile in 0.57 s instead of 1.58 s
#: (2.18 s with XLA's defaults) and run in about a millisecond either way; a training program
#: compiled so ran 3x slower (measured side by side on the 2-core CPU), so those keep level 1.
ONE_OFF_CPU_COMPILER_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
}


#: Added to both option sets where XLA accepts it (:func:`supported_options`): no reduction or
#: elementwise fusion is handed to YNNPACK.
NO_LIBRARY_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _accepted(name: str, value) -> bool:
    """Whether XLA on the CPU accepts the compile option ``name`` (one trial compile)."""
    import jax
    import numpy as np

    try:
        x = jax.device_put(np.float32(0), jax.devices("cpu")[0])
        jax.jit(lambda x: x + 1).lower(x).compile({name: value})
    except Exception as error:  # XlaRuntimeError or JaxRuntimeError, by jaxlib version
        if "No such compile option" in str(error):
            return False
        raise
    return True


def supported_options(options: dict) -> dict:
    """``options`` without those the installed XLA does not know (they would fail a compile)."""
    return {name: value for name, value in options.items() if _accepted(name, value)}


#: The one-off options as ``XLA_FLAGS``, for a whole process (:func:`prefer_one_off_compiles`).
ONE_OFF_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def with_one_off_flags(xla_flags: str) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with :data:`ONE_OFF_XLA_FLAGS` added, except those
    it already sets."""
    present = {part.split("=")[0] for part in xla_flags.split()}
    extra = [flag for flag in ONE_OFF_XLA_FLAGS if flag.split("=")[0] not in present]
    return " ".join([xla_flags, *extra]).strip()


@contextlib.contextmanager
def one_off_compiles() -> Iterator[None]:
    """Inside: :data:`ONE_OFF_XLA_FLAGS` added to ``$XLA_FLAGS`` (a flag already set there is
    kept); after: ``$XLA_FLAGS`` as it was.

    For commands made of many small programs that each run a few times - the theorem checks,
    whose first run is mostly compiling. XLA reads the flags when JAX starts its backend, so they
    apply to a process whose first computation happens inside (a command line run) and to
    nothing else: a process whose backend is already up is unchanged, and nothing spawned after
    the block inherits them. Programs jitted with explicit ``compiler_options`` (the tree and
    Markov kernels) keep theirs.

    Measured on the 2-core CPU, idle, no persistent cache: ``harm-horizon check`` (938 runs) in
    169 s wall / 202 s CPU with XLA's defaults, 95 s / 95 s with these flags, all checks passing.
    """
    previous = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = with_one_off_flags(previous or "")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = previous


def compiler_options(backend: str, *, one_off: bool = False) -> dict | None:
    """The ``compiler_options`` to pass to ``jax.jit`` for ``backend`` (``"cpu"``, ``"gpu"``...);
    ``one_off``: for a program that runs once or a few times (:data:`ONE_OFF_CPU_COMPILER_OPTIONS`)."""
    if backend != "cpu":
        return None
    base = ONE_OFF_CPU_COMPILER_OPTIONS if one_off else CPU_COMPILER_OPTIONS
    return {**base, **supported_options(NO_LIBRARY_FUSIONS)}


def one_off_jit(fun):
    """``jax.jit(fun)`` compiled with ``compiler_options(backend, one_off=True)``, the backend
    being JAX's default when ``fun`` is first called (not at import). Inside another jitted
    program ``fun`` is a plain nested ``jax.jit``, compiled with that program's options."""

    @functools.cache
    def jitted():
        import jax

        return jax.jit(fun, compiler_options=compiler_options(jax.default_backend(), one_off=True))

    @functools.cache
    def nested():
        import jax

        return jax.jit(fun)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        import jax
        from jax.core import Tracer

        # inside a trace (jit, vmap, grad) ``fun`` is a nested jit of the outer program without
        # options (JAX refuses them there; the outer program's apply)
        if any(isinstance(x, Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
            return nested()(*args, **kwargs)
        return jitted()(*args, **kwargs)

    return call


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


@contextlib.contextmanager
def compiling_in_turn(key: str, wait: bool = True) -> Iterator[bool]:
    """Inside, when the value is ``True``: this process is the only one compiling the program
    named ``key`` into JAX's persistent compilation cache (an exclusive ``flock`` on a file next
    to the cache).

    The worker processes of a sweep start on the same program at the same time; compiling it in
    every worker at once costs each the whole compile, slowed by the others (15-16 s per worker
    for the quick preset's program with two workers on the 2-core CPU). Taking turns, the first
    compiles it and writes the cache, and the next loads it from there. Once a compile inside has
    finished, a marker file says so and later calls with ``key`` do not wait (loading from the
    cache is quick and needs no turn). Without a cache folder (:func:`enable_compilation_cache`
    off), or where ``flock`` is missing, nothing is shared, so nothing waits. A process that dies
    inside releases the lock with its files.

    The value is ``True`` when the turn is this process's. With ``wait=False`` a key that another
    process (or thread) holds does not wait: the value is ``False`` and the body must leave the
    program alone (and come back for it later), so that a caller with several programs can
    compile another one meanwhile.
    """
    import jax

    folder = getattr(jax.config, "jax_compilation_cache_dir", None)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        fcntl = None
    handle, marker = None, None
    if folder and fcntl is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        marker = os.path.join(folder, f".compiled-{digest}")
        if not os.path.exists(marker):
            try:
                handle = open(os.path.join(folder, f".compiling-{digest}.lock"), "a")  # noqa: SIM115
            except OSError:
                handle = None
    if handle is None:
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
            with contextlib.suppress(OSError):
                open(marker, "a").close()  # noqa: SIM115
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
