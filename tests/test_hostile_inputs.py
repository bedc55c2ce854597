"""Hostile inputs (issue 16): a fuzz test of the CLI entry point, and one regression test per class.

The fuzz test builds ``.npz`` files for ``analyze`` and ``analyze-markov`` (random keys, dtypes,
shapes, rewritten headers, truncations, bit flips, compressed members) and runs
``experiments.cli.main.main`` in process under ``HARM_HORIZON_MEMORY_LIMIT`` and a per-example alarm. Every
outcome must be success or one line on stderr with exit status 2, and nothing else in the output
folder; every accepted input's result is compared with the plain numpy reference
(:func:`toy_lm.engines.reference.reference_analysis`; for the Markov engine, on the same policy and harm
expanded to the prefix tree).
"""

import contextlib
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.cli.main import main
from toy_lm import bounds, outputs, signals
from toy_lm import io as tio
from toy_lm.engines.reference import reference_analysis
from toy_lm.errors import InputError, OutputError
from toy_lm.models.automata import automaton_harm_table, make_automaton
from toy_lm.tables import all_prefixes

MEMORY_LIMIT = "64M"
#: Examples per fuzz test: about 30 s of CI time in all; raise it for a longer hunt
#: (``HARM_HORIZON_FUZZ_EXAMPLES=500 HYPOTHESIS_PROFILE=long``).
FUZZ_EXAMPLES = int(os.environ.get("HARM_HORIZON_FUZZ_EXAMPLES", "0")) or None
#: Seconds one example may take before it counts as a hang. Tiny instances take well under a
#: second once compiled, but a new shape's XLA compilation took up to ~30 s on a loaded 2-core CI
#: machine (load average 17), so the bound leaves room for that; a real hang never ends.
HANG_S = 120
EPS = float(np.finfo(np.float64).eps)


class Hang(BaseException):
    """Raised by the alarm: an example ran past :data:`HANG_S` (BaseException: no catch-all
    inside the code under test can hide it)."""


@contextlib.contextmanager
def alarm(seconds):
    def ring(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv, capsys):
    capsys.readouterr()
    with alarm(HANG_S):
        status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_refusal(status, err, command):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"harm-horizon {command}: error: "), err
    assert "Traceback" not in err


# -- building archives, with the tricks an adversary uses ---------------------------------------
def npy_bytes(array=None, *, descr=None, shape_text=None, body=None) -> bytes:
    """A ``.npy`` member: from ``array``, or a hand-written header (any shape text, any body)."""
    if array is not None and shape_text is None and descr is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=True)
        return buf.getvalue()
    array = np.asarray(array if array is not None else np.zeros(1))
    descr = descr or np.lib.format.dtype_to_descr(array.dtype)
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape_text}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    body = array.tobytes() if body is None else body
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + body


def archive(members: dict, compressed: bool) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return buf.getvalue()


DTYPES = [
    "float64",
    "float32",
    "float16",
    "int8",
    "int64",
    "uint8",
    "bool",
    "complex64",
    "U3",
    "m8[s]",
    "M8[D]",
    "object",
]
SHAPES = [
    "(1, 10**400)",
    "(-1, 2)",
    "(2**62, 2**62)",
    "()",
    "(0, 2)",
    "((1,),)",
    "'x'",
    "(1, 2, 3)",
    "[" * 50 + "]" * 50,
]


@st.composite
def hostile_archive(draw, arrays):
    """Bytes of an archive made from ``arrays`` (name -> array) after a few drawn attacks."""
    arrays = dict(arrays)
    members = {}
    for _ in range(draw(st.integers(0, 2))):
        if not arrays:
            break
        name, attack = draw(st.sampled_from(sorted(arrays))), draw(st.integers(0, 5))
        if attack == 0:  # another dtype
            dtype = draw(st.sampled_from(DTYPES))
            value = arrays[name]
            arrays[name] = (
                value.astype(dtype)
                if dtype not in ("U3", "object", "M8[D]")
                else value.astype("U3")
                if dtype == "U3"
                else value.astype(object)
                if dtype == "object"
                else value.astype("int64").astype("M8[D]")
            )
        elif attack == 1:  # dropped, or renamed to a near-miss key
            value = arrays.pop(name)
            new = draw(
                st.sampled_from(["", name + "0", name.replace("_", "_0"), "x", name.upper()])
            )
            if new:
                arrays[new] = value
        elif attack == 2:  # another shape
            value = np.atleast_1d(arrays[name])
            arrays[name] = draw(
                st.sampled_from(
                    [
                        value.reshape(-1),
                        value[..., :1],
                        value[None],
                        np.zeros((0,) + value.shape[1:]),
                        value.T,
                    ]
                )
            )
        elif attack == 3:  # a header that lies
            members[name] = npy_bytes(arrays.pop(name), shape_text=draw(st.sampled_from(SHAPES)))
        elif attack == 4:  # values out of range
            value = arrays[name].astype(np.float64)
            if value.size:
                value.reshape(-1)[0] = draw(st.sampled_from([np.nan, np.inf, -1.0, 2.0, 1e308]))
            arrays[name] = value
        else:  # an extra member
            arrays[draw(st.sampled_from(["extra", "logits_9", "dfa_start2"]))] = np.zeros(3)
    members.update({k: npy_bytes(v) for k, v in arrays.items()})
    data = bytearray(archive(members, compressed=draw(st.booleans())))
    damage = draw(st.integers(0, 3))
    if damage == 1 and len(data) > 1:  # truncation
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == 2:  # bit flips anywhere (headers, deflate streams, directory)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def tree_instance(seed, vocab_size, length):
    rng = np.random.default_rng(seed)
    arrays = {f"logits_{l}": rng.normal(0, 3, (vocab_size**l, vocab_size)) for l in range(length)}
    arrays["harm"] = rng.integers(0, 2, vocab_size**length).astype(np.float64)
    return arrays


def check_folder_clean(folder, allowed):
    assert sorted(os.listdir(folder)) == sorted(allowed)


def tolerance(logits, nodes):
    """Absolute tolerance of engine vs reference: each output sums at most ``nodes`` terms, each
    with a rounding of order ``eps (1 + |z|)`` from a log-softmax of logits ``z`` (factor 64 for
    the few operations per term)."""
    scale = 1 + max(float(np.max(np.abs(z))) for z in logits)
    return 64 * EPS * nodes * scale


@given(
    seed=st.integers(0, 2**16),
    vocab_size=st.sampled_from([2, 3]),
    length=st.integers(1, 3),
    lam=st.sampled_from([None, 0.5]),
    data=st.data(),
)
@settings(max_examples=FUZZ_EXAMPLES or 30)
def test_fuzz_analyze(tmp_path_factory, capsys, monkeypatch, seed, vocab_size, length, lam, data):
    monkeypatch.setenv("HARM_HORIZON_MEMORY_LIMIT", MEMORY_LIMIT)
    folder = tmp_path_factory.mktemp("fuzz")
    path, out = folder / "t.npz", folder / "out.npz"
    path.write_bytes(data.draw(hostile_archive(tree_instance(seed, vocab_size, length))))
    argv = ["analyze", str(path), "--out", str(out)] + (["--lam", str(lam)] if lam else [])
    status, _, err = run_cli(argv, capsys)
    if status != 0:
        assert_one_line_refusal(status, err, "analyze")
        check_folder_clean(folder, ["t.npz"])
        return
    with np.load(path) as npz:  # accepted: compare with the reference on what the file holds
        keys = tio.level_keys(npz.files, "logits")
        logits = [npz[k].astype(np.float64) for k in keys]
        harm = npz["harm"].astype(np.float64)
    want = reference_analysis(logits, harm, lam=lam)
    tol = tolerance(logits, sum(z.size for z in logits))
    with np.load(out) as got:
        for key, value in want.items():
            if np.asarray(value).dtype == np.bool_ or key == "horizon":
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                np.testing.assert_allclose(got[key], value, rtol=0, atol=tol, err_msg=key)
    check_folder_clean(folder, ["t.npz", "out.npz"])


def markov_instance(seed, vocab_size, length, order):
    rng = np.random.default_rng(seed)
    states = 3
    return {
        "markov_logits": rng.normal(0, 2, (length, vocab_size**order, vocab_size)),
        "dfa_transitions": rng.integers(0, states, (states, vocab_size)),
        "dfa_verdict": rng.integers(0, 2, states).astype(np.float64),
        "dfa_start": np.int64(0),
    }


def markov_tree_logits(logits, length, vocab_size):
    """The level tables of a Markov policy: prefix ``y_<=l`` uses the context of its last ``k``
    tokens, left-padded with token 0."""
    order = round(np.log(logits.shape[1]) / np.log(vocab_size))
    tables = []
    for level in range(length):
        prefixes = all_prefixes(vocab_size, level)
        padded = np.concatenate([np.zeros((len(prefixes), order), np.int64), prefixes], axis=1)
        context = np.zeros(len(prefixes), np.int64)
        for j in range(order):
            context = context * vocab_size + padded[:, level + j]
        tables.append(logits[level][context])
    return tables


@given(
    seed=st.integers(0, 2**16),
    vocab_size=st.sampled_from([2, 3]),
    length=st.integers(1, 3),
    order=st.integers(0, 2),
    data=st.data(),
)
@settings(max_examples=FUZZ_EXAMPLES or 20)
def test_fuzz_analyze_markov(
    tmp_path_factory, capsys, monkeypatch, seed, vocab_size, length, order, data
):
    monkeypatch.setenv("HARM_HORIZON_MEMORY_LIMIT", MEMORY_LIMIT)
    folder = tmp_path_factory.mktemp("fuzz")
    path, out = folder / "m.npz", folder / "out.npz"
    path.write_bytes(data.draw(hostile_archive(markov_instance(seed, vocab_size, length, order))))
    status, stdout, err = run_cli(
        ["analyze-markov", str(path), "--out", str(out), "--json"], capsys
    )
    if status != 0:
        assert_one_line_refusal(status, err, "analyze-markov")
        check_folder_clean(folder, ["m.npz"])
        return
    json.loads(stdout)  # strict JSON (a NaN would not parse back as a number... or at all)
    assert "NaN" not in stdout and "Infinity" not in stdout
    with np.load(path) as npz:
        logits = npz["markov_logits"].astype(np.float64)
        dfa = make_automaton(
            npz["dfa_transitions"],
            npz["dfa_verdict"],
            int(np.asarray(npz["dfa_start"]).reshape(-1)[0]),
        )
    length, vocab_size = logits.shape[0], logits.shape[2]
    tree = markov_tree_logits(logits, length, vocab_size)
    want = reference_analysis(tree, np.asarray(automaton_harm_table(dfa, length)))
    tol = tolerance(tree, sum(z.size for z in tree))
    with np.load(out) as got:
        np.testing.assert_allclose(got["expected_harm"], want["expected_harm"], rtol=0, atol=tol)
        np.testing.assert_allclose(
            got["harm_information"], want["harm_information"], rtol=0, atol=tol
        )
    check_folder_clean(folder, ["m.npz", "out.npz"])


@given(
    text=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "preset",
                            "seed",
                            "world",
                            "align",
                            "base",
                            "policy",
                            "length",
                            "lam",
                            "batch_size",
                            "num_examples",
                            "markov_order",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
@settings(max_examples=FUZZ_EXAMPLES or 40)
def test_fuzz_config_files(tmp_path_factory, text):
    """Any configuration file either loads into a run within the memory budget or is one
    ConfigError (what ``harm-horizon train`` prints as one line, exit 2, before training)."""
    from experiments.config import check_run_memory
    from experiments.presets import load_config
    from toy_lm.errors import ConfigError

    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_bytes(text)
    with alarm(HANG_S):
        try:
            check_run_memory(load_config(str(path)))
        except ConfigError as err:
            assert "\n" not in str(err)


# -- fixed regressions, one per class -------------------------------------------------------------
def test_non_regular_inputs_are_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    for argv in (
        ["analyze", "/dev/zero"],
        ["analyze", str(fifo)],
        ["analyze-markov", str(fifo)],
        ["analyze", str(tmp_path)],
    ):
        status, _, err = run_cli(argv, capsys)
        assert_one_line_refusal(status, err, argv[0])


def test_markov_memory_guard_counts_the_transition_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARM_HORIZON_MEMORY_LIMIT", "100M")
    big = 4096  # a 128 MiB (S, V) table compresses to about 130 KB
    path = tmp_path / "m.npz"
    np.savez_compressed(
        path,
        markov_logits=np.zeros((2, 1, big)),
        dfa_transitions=np.zeros((big, big), np.int64),
        dfa_verdict=np.zeros(big),
        dfa_start=np.int64(0),
    )
    status, _, err = run_cli(["analyze-markov", str(path)], capsys)
    assert_one_line_refusal(status, err, "analyze-markov")
    assert "S=4096" in err and "more than the 100.0 MiB" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--random", "100000", "100000", "1"],
        ["analyze", "--random", "2", str(10**22), "1"],
        ["analyze", "--random", "2", "1030", "1"],
        ["analyze", "--random", "2", "3", "1", "--seed", str(2**64)],
        ["analyze", "--random", "2", "3", "1", "--lam", "1e-310"],
        ["check", "--seeds", "100000000"],
        ["check", "--length", "999999"],
        ["check", "--theorem", ""],
        ["analyze", "--random", "2", "3", "1", "--out", ""],
    ],
)
def test_extreme_numbers_are_refused_at_once(capsys, argv):
    status, _, err = run_cli(argv, capsys)
    assert_one_line_refusal(status, err, argv[0])


@pytest.mark.parametrize("value", ["1e999", "inf", "-inf", "-1", "0", "abc", "nanG"])
def test_memory_limit_variable_is_blamed(capsys, monkeypatch, value):
    monkeypatch.setenv("HARM_HORIZON_MEMORY_LIMIT", value)
    status, _, err = run_cli(["analyze", "--random", "2", "2", "1"], capsys)
    assert_one_line_refusal(status, err, "analyze")
    assert f"HARM_HORIZON_MEMORY_LIMIT={value!r}" in err


def test_lambda_down_to_the_bound_agrees_with_small_lambda(tmp_path, capsys):
    """λ = 2**-1022 (the bound) gives the same equilibrium KL as λ = 1e-3 and 1e-300 on a
    binary harm (π* has already conditioned on h = 0); below it the option is refused."""
    arrays = tree_instance(3, 2, 3)
    path = tmp_path / "t.npz"
    np.savez(path, **arrays)
    kls = []
    for lam in ("1e-3", "1e-300", repr(bounds.MIN_LAMBDA)):
        status, out, err = run_cli(["analyze", str(path), "--lam", lam, "--json"], capsys)
        assert status == 0, err
        kls.append([p["equilibrium_kl"] for p in json.loads(out)["positions"]])
    # KL values are O(1); each comes from a handful of log-sum-exps over V**T = 8 leaves.
    np.testing.assert_allclose(kls[1], kls[0], rtol=0, atol=64 * EPS * 8)
    np.testing.assert_allclose(kls[2], kls[0], rtol=0, atol=64 * EPS * 8)
    assert max(kls[0]) > 0.01  # not a vacuous comparison of zeros


def test_outputs_refuse_what_they_would_destroy(tmp_path, capsys):
    tables = tmp_path / "t.npz"
    np.savez(tables, **tree_instance(0, 2, 2))
    link = tmp_path / "link.npz"
    link.symlink_to(tables)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    for target in ("/dev/null", str(fifo), str(link), str(tables), str(tmp_path)):
        status, _, err = run_cli(["analyze", str(tables), "--out", target], capsys)
        assert_one_line_refusal(status, err, "analyze")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.path.islink(link)


def test_outputs_keep_or_derive_their_mode(tmp_path, capsys):
    tables = tmp_path / "t.npz"
    np.savez(tables, **tree_instance(0, 2, 2))
    kept = tmp_path / "kept.npz"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    assert run_cli(["analyze", str(tables), "--out", str(kept)], capsys)[0] == 0
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640
    old = os.umask(0o027)
    try:
        assert run_cli(["analyze", str(tables), "--out", str(tmp_path / "new.npz")], capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o640


def test_stale_partial_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".partial-analyze-{dead}-x.npz"
    live = tmp_path / f".partial-analyze-{os.getpid()}-y.npz"
    other = tmp_path / f".partial-check-{dead}-z.json"
    for path in (stale, live, other):
        path.write_bytes(b"")
    outputs.check_output(str(tmp_path / "out.npz"), flag="--out", tag="analyze")
    assert not stale.exists() and live.exists() and other.exists()


def test_check_json_probe_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('[{"old": 1}]')
    outputs.check_output(str(target), flag="--json", tag="check")
    assert target.read_text() == '[{"old": 1}]'
    assert os.listdir(tmp_path) == ["results.json"]


def test_interrupted_write_leaves_no_temporary_file(tmp_path):
    def write(fh):
        fh.write(b"half")
        raise signals.Interrupted(signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(str(tmp_path / "x.json"), write, tag="t")
    assert os.listdir(tmp_path) == []
    with pytest.raises(OutputError, match="regular file"):
        outputs.check_output(str(tmp_path), flag="--out", tag="t")


def test_corrupt_archives_are_one_input_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=np.arange(4096.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(InputError):
        tio.load_npz(str(path), ["a"])
    with zipfile.ZipFile(path := tmp_path / "h.npz", "w") as zf:
        zf.writestr(
            "a.npy", npy_bytes(shape_text="(1, 10**400)".replace("10**400", "1" + "0" * 400))
        )
    with pytest.raises(InputError, match="10\\^400"):
        tio.npz_shapes(str(path))


def test_level_keys_names_the_odd_key():
    with pytest.raises(InputError, match="logits_01 is not a level name"):
        tio.level_keys(["logits_0", "logits_01"], "logits")


def test_harm_message_shows_enough_digits():
    from toy_lm.tables import validate_harm

    with pytest.raises(InputError, match="max 1.0000000000000002"):
        validate_harm(np.array([0.0, 1.0 + EPS]), 2, 1)


@pytest.mark.parametrize(
    "text, match",
    [
        (b"preset = [1]\n", "unknown preset"),
        (b'seed = "\xff"\n', "UTF-8"),
        (b"a = " + b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b"[base]\nnum_examples = 100000000000\n", "base.num_examples"),
        (b"[align]\nbatch_size = 10000000000\n", "align.batch_size"),
        (b'[policy]\nkind = "markov"\nmarkov_order = 40\n', "policy.markov_order"),
        (b"[world]\nlength = 100000000000\n", "world.length"),
        (b"[align]\nlam = 1e-320\n", "align.lam"),
        (b"seed = 100000000000000000000000\n", "seed"),
    ],
)
def test_config_files_are_bounded(tmp_path, text, match):
    from experiments.presets import load_config
    from toy_lm.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_bytes(text)
    with alarm(HANG_S), pytest.raises(ConfigError, match=match):
        load_config(str(path))


def test_sigint_at_any_time_is_one_line_and_130(tmp_path):
    """Start-up included (the heavy imports run inside ``main``): the interrupt is never a
    traceback, never a native crash and never swallowed. The timer starts where the console script
    calls ``main``. Before the handler deferred the exception out of native frames (JAX's nanobind
    callbacks, an extension module's import), a SIGINT there ended in status -6 ("terminate called
    after throwing an instance of 'nanobind::python_error'"), -11, or a broken ``import numpy``.
    Progress lines may precede the last one; a signal after the run finished leaves status 0."""
    tables = tmp_path / "t.npz"
    np.savez(tables, **tree_instance(0, 2, 2))
    script = (
        "import signal, sys\n"
        "from experiments.cli.main import main\n"
        # A signal before main's first line (still inside print) is outside what is tested: any
        # Python program shows a KeyboardInterrupt traceback there. main installs its handlers.
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "sys.exit(main())\n"
    )  # as the console script calls it
    interrupted = 0
    for delay in (0.0, 0.02, 0.1, 0.3, 0.6, 1.0, 2.0):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                "analyze",
                str(tables),
                "--lam",
                "0.5",
                "--out",
                str(tmp_path / "o.npz"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
        if proc.returncode == 0:  # finished before the signal: nothing to check at this delay
            continue
        assert proc.returncode == 130, (delay, proc.returncode, stderr)
        last = stderr.strip().splitlines()[-1]  # before the arguments are parsed: no command
        assert re.fullmatch(r"harm-horizon( analyze)?: interrupted by SIGINT; .*", last), stderr
        interrupted += 1
    assert interrupted >= 3, "the run finished before most signals: the test saw nothing"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".partial-")]


def test_sweep_damaged_files_and_lock(tmp_path):
    from experiments import sweep
    from experiments.presets import PRESETS
    from experiments.train import result_path, run_id
    from toy_lm.errors import ConfigError

    cfg = PRESETS["tiny"]
    os.makedirs(tmp_path / "runs")
    path = result_path(str(tmp_path), cfg)
    for damaged in ('{"run_id": "', "{}", json.dumps({"run_id": "other"})):
        with open(path, "w") as fh:
            fh.write(damaged)
        assert sweep.pending([cfg], str(tmp_path)) == [cfg]
    with open(path, "w") as fh:
        json.dump(
            {"run_id": run_id(cfg), "config": {}, "base": {}, "aligned": {}, "training": {}}, fh
        )
    assert sweep.pending([cfg], str(tmp_path)) == []
    with sweep.folder_lock(str(tmp_path)):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            with sweep.folder_lock(str(tmp_path)):
                pass
    with sweep.folder_lock(str(tmp_path)):  # released when the holder ends
        pass


def test_unwritable_folder_and_full_disk_are_one_output_error(tmp_path, monkeypatch):
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="not writable"):
        outputs.check_output(str(tmp_path / "x.npz"), flag="--out", tag="t")
    monkeypatch.setattr(tempfile, "mkstemp", real)

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        outputs.write_atomic(str(tmp_path / "x.npz"), full, tag="t")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_results_folder_that_is_a_file_is_refused_before_training(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    status, _, err = run_cli(
        [command, "tiny" if command == "train" else "quick", "--out", str(afile)], capsys
    )
    assert_one_line_refusal(status, err, command)
    assert afile.read_text() == "keep"


def test_sweep_workers_die_with_their_parent(tmp_path):
    """A worker set up like the sweep's (``experiments.workers.die_with_parent``) ends when its parent is killed."""
    flag = tmp_path / "up"
    worker = (
        "import sys, time\n"
        "from experiments.workers import die_with_parent\n"
        "die_with_parent(int(sys.argv[1]))\n"
        "open(sys.argv[2], 'w').write('up')\n"
        "time.sleep(120)\n"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid()), "
        "sys.argv[1]])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent, str(flag)], stdout=subprocess.PIPE, text=True
    )
    worker_pid = int(proc.stdout.readline())
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 5  # the watchdog polls every second
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{worker_pid}/stat") as fh:
            if fh.read().split()[2] == "Z":  # dead, not yet reaped
                return
        time.sleep(0.05)
    pytest.fail(f"worker {worker_pid} outlived its parent by 5 s")


def test_damaged_results_are_one_line_or_rerun(tmp_path, capsys):
    from experiments.base_model import load_base, policy_from_config
    from experiments.presets import PRESETS
    from experiments.world import make_world

    os.makedirs(tmp_path / "runs")
    (tmp_path / "runs" / "abc.json").write_text("{}")
    status, _, err = run_cli(["figures", str(tmp_path)], capsys)
    assert_one_line_refusal(status, err, "figures")
    assert "abc.json is not a complete run result" in err
    cfg = PRESETS["tiny"]
    policy = policy_from_config(cfg.policy, make_world(cfg.world))
    base = tmp_path / "base-x.npz"
    np.savez(base, leaf_0=np.zeros(3), sft_gap=np.zeros(2), seconds=np.zeros(()))
    base.write_bytes(base.read_bytes()[:100])  # truncated: retrained, not fatal
    assert load_base(str(base), policy, cfg.policy) is None


def test_signal_is_deferred_out_of_native_callers():
    """The handler raises only where no frame below it belongs to JAX & co. or an import."""
    import jax

    assert signals.safe_to_raise(sys._getframe())
    inside = jax.tree_util.tree_map(lambda _: sys._getframe(), [0])[0]  # called by JAX's C++
    assert not signals.safe_to_raise(inside)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in this (main) thread for the test, as Python's default."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _mkstemp_then_sigint(monkeypatch):
    """``tempfile.mkstemp`` that receives a SIGINT right after creating its file, before it
    returns: the moment a signal once left an untracked ``.partial-*`` file behind."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        made = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_signal_as_the_temporary_file_is_created_leaves_nothing(
    tmp_path, monkeypatch, sigint_raises
):
    """The signal is held until the file is registered (signals.held), then delivered: the
    write stops with KeyboardInterrupt and its cleanup removes the file."""
    _mkstemp_then_sigint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(str(tmp_path / "x.npz"), b"data", tag="t")
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        outputs.check_output(str(tmp_path / "y.npz"), flag="--out", tag="t")  # the probe
    assert os.listdir(tmp_path) == []
    assert signals.remove_tracked() == 0  # nothing left for the CLI's last cleanup either
