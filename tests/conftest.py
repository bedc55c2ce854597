"""Strict test configuration: float64, rank-promotion errors, Hypothesis profiles.

Hypothesis profiles: ``ci`` (the default; derandomized, no deadline, modest example counts) and
``long`` (many more examples), chosen with ``HYPOTHESIS_PROFILE=long``.
"""

import os

# The library selects no matplotlib backend (the command line selects Agg); the tests draw into
# files only, so they select Agg too, before anything imports matplotlib.
os.environ.setdefault("MPLBACKEND", "Agg")

# Most tests compile small programs that run once or twice, as `harm-horizon check` does: compile
# them as one-offs too (LLVM level 0, no fusion emitters; programs with explicit compiler options
# keep theirs), before JAX starts its backend. HARM_HORIZON_TEST_XLA_DEFAULTS=1 keeps XLA's
# defaults. Child processes the tests start inherit the flags.
if os.environ.get("HARM_HORIZON_TEST_XLA_DEFAULTS") != "1":
    from toy_lm.compile_options import with_one_off_flags  # noqa: E402

    os.environ["XLA_FLAGS"] = with_one_off_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# ``maybe_jit`` below is a stateless function-scoped fixture, safe to share across examples.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "long",
    deadline=None,
    max_examples=500,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    """Parametrize a test over ``(identity, jax.jit)`` as rlax does."""
    return jax.jit if request.param else (lambda f, **kw: f)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One JAX compilation cache for every process a test module starts (they compile the same)."""
    from toy_lm.compile_options import CACHE_ENV

    folder = str(tmp_path_factory.mktemp("jax-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, folder)
        yield folder
