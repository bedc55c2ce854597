"""``harm-horizon explore``: the self-contained teaching page, tested in a real browser.

Headless Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it) is driven by Playwright:
the test moves the λ slider, switches instance, flips a leaf's harm and drags a conditional
probability, and checks that every value the page shows equals the exact engine's
(float64, recomputed here by the numpy oracle :mod:`toy_lm.engines.reference`, independently of the page)
within the tolerance below, that the page's JavaScript port agrees with the engine on random trees, that nothing is
fetched from the network and nothing is logged as an error; it saves a screenshot.

Without Chromium the browser tests are skipped, unless ``HARM_HORIZON_REQUIRE_BROWSER=1`` (set by
``.ci/run``), which makes a missing browser a failure.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments import explorer
from experiments.cli.main import main
from toy_lm.engines.reference import reference_analysis

# Every shown value is a sum of at most 2 * V**T * V + 2T <= 1100 rounded terms (V**T <= 256,
# V <= 4) of magnitude <= max(1, |value|): eps(float64) * 1100 = 2.4e-13 relative. 1e-12 (the
# issue's bound) leaves 4x headroom for the two implementations' different summation orders.
RTOL = 1e-12


def close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    bound = RTOL * np.maximum(1.0, np.abs(want))
    assert np.all(err <= bound), f"{what}: max error {err.max():.3g} > {RTOL:g} (relative)"
    return got.size


def engine(logits, harm, lam):
    """The page's quantities from :func:`toy_lm.engines.reference.reference_analysis`, the plain numpy
    implementation kept as a test oracle (independent of the page's Numba-computed data and of
    the JavaScript port; no JAX compile per tree shape, so the test stays fast)."""
    logits = [np.asarray(z, np.float64) for z in logits]
    harm = np.asarray(harm, np.float64)
    length = len(logits)
    ref = reference_analysis(logits, harm, lam=lam)
    eq = [ref[f"equilibrium_logits_{l}"] for l in range(length)]
    return {
        "H": [ref[f"H_{l}"] for l in range(length + 1)],
        "G": [ref[f"grad_{l}"].reshape(-1) for l in range(length)],
        "I": ref["harm_information"],
        "horizon": int(ref["horizon"]),
        "determined": [ref[f"determined_{l}"].astype(int) for l in range(length + 1)],
        "kl": ref["equilibrium_kl"],
        "eq_harm": float(reference_analysis(eq, harm)["expected_harm"]),
        "eq_probs": [np.exp(e).reshape(-1) for e in eq],
    }


def write_tables(path, logits, harm):
    np.savez(path, harm=harm, **{f"logits_{l}": z for l, z in enumerate(logits)})
    return str(path)


def small_user_tables(rng, vocab_size=2, length=3):
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = np.repeat(rng.integers(0, 2, vocab_size**2).astype(np.float64), vocab_size)
    return logits, harm


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer")
    logits, harm = small_user_tables(np.random.default_rng(0))
    tables = write_tables(folder / "mine.npz", logits, harm)
    assert main(["explore", "--out", str(folder / "explorer.html"), "--tables", tables]) == 0
    return folder / "explorer.html", (logits, harm)


def embedded_data(page: str) -> dict:
    match = re.search(r"const EXPLORER_DATA = (\{.*?\});</script>", page, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_page_is_self_contained_and_carries_the_engine_values(page_file):
    path, (logits, harm) = page_file
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"<link|<iframe|<img|\bsrc=|https?://(?!www\.w3\.org/2000/svg)", page)
    data = embedded_data(page)
    assert [i["name"] for i in data["instances"]][0] == "your tables (mine.npz)"
    assert len(data["instances"]) == 1 + len(explorer.builtin_instances())
    mine = data["instances"][0]
    assert (mine["V"], mine["T"]) == (2, 3)
    lam_index = 7
    want = engine(logits, harm, data["lams"][lam_index])
    got = mine["engine"]
    for level in range(4):
        close(got["H"][level], want["H"][level], "H")
    for level in range(3):
        close(got["G"][level], want["G"][level], "G")
    close(got["I"], want["I"], "I")
    assert got["horizon"] == want["horizon"] == 2
    close(got["lams"][lam_index]["kl"], want["kl"], "KL")


def test_too_large_tables_are_refused_with_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(2**l, 2)) for l in range(9)]  # 512 leaves
    tables = write_tables(tmp_path / "big.npz", logits, np.zeros(2**9))
    out = tmp_path / "page.html"
    assert main(["explore", "--out", str(out), "--tables", tables]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at most 256 leaves" in err[0] and "512" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


# -- in a real browser --------------------------------------------------------------------------


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("HARM_HORIZON_REQUIRE_BROWSER"):
            pytest.fail("no chromium found, and HARM_HORIZON_REQUIRE_BROWSER is set")
        pytest.skip("no chromium browser installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


class Page:
    """The opened explorer page, with the values it shows."""

    def __init__(self, browser, url):
        self.page = browser.new_page(viewport={"width": 1300, "height": 1000})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)

    def cells(self, selector):
        return self.page.eval_on_selector_all(
            selector, "els => els.map(e => Number(e.dataset.value))"
        )

    def shown(self):
        col = lambda name: self.cells(f"#positions td[data-name={name}]")  # noqa: E731
        summary = lambda name: self.cells(f"#summary td[data-name={name}]")[0]  # noqa: E731
        return {
            "I": col("I"),
            "kl": col("kl"),
            "approx": col("approx"),
            "expected_harm": summary("expected_harm"),
            "horizon": summary("horizon"),
            "lam": summary("lam"),
            "eq_harm": summary("eq_harm"),
            "G": self.cells("#node-table td[data-name=G]"),
            "eq": self.cells("#node-table td[data-name=eq]"),
            "node_h": self.cells("#node-h")[0],
            "H": self.page.eval_on_selector_all(
                "#tree circle", "els => els.map(e => [e.dataset.node, Number(e.dataset.h)])"
            ),
            "source": self.page.get_attribute("#source", "data-source"),
        }


def check_shown(shown, logits, harm, lam, node):
    """Every value on the page against the engine; ``node`` = (level, prefix) selected."""
    want = engine(logits, harm, lam)
    vocab_size = np.asarray(logits[0]).shape[1]
    count = close(shown["I"], want["I"], "I_t")
    count += close(shown["kl"], want["kl"], "KL_t(pi*|pi)")
    count += close(shown["approx"], want["I"] / (2 * lam**2), "I_t/(2 lam^2)")
    count += close(shown["expected_harm"], want["H"][0][0], "E[h]")
    count += close(shown["eq_harm"], want["eq_harm"], "E_pi*[h]")
    assert shown["horizon"] == want["horizon"]
    assert shown["lam"] == lam
    for key, value in shown["H"]:
        level, prefix = map(int, key.split(":"))
        count += close(value, want["H"][level][prefix], f"H at {key}")
    level, prefix = node
    count += close(shown["node_h"], want["H"][level][prefix], "selected H")
    if level < len(logits):
        rows = slice(prefix * vocab_size, (prefix + 1) * vocab_size)
        count += close(shown["G"], want["G"][level][rows], "G of the selected node")
        count += close(shown["eq"], want["eq_probs"][level][rows], "pi* of the selected node")
    return count


def test_explorer_in_a_real_browser(browser, page_file, tmp_path):
    path, _ = page_file
    data = embedded_data(path.read_text(encoding="utf-8"))
    lams = data["lams"]
    view = Page(browser, path.as_uri())
    inst = lambda i: (
        (
            [np.asarray(z).reshape(-1, d["V"]) for z in d["logits"]],  # noqa: E731
            np.asarray(d["harm"]),
        )
        if (d := data["instances"][i])
        else None
    )
    compared = 0

    # As built: the engine's precomputed values, at the default λ and after moving the slider.
    logits, harm = inst(0)
    shown = view.shown()
    assert shown["source"] == "engine"
    compared += check_shown(shown, logits, harm, lams[20], (0, 0))
    view.page.locator("#lam").fill("5")
    compared += check_shown(view.shown(), logits, harm, lams[5], (0, 0))

    # Switch to the refusal world (the slider keeps its λ).
    names = [i["name"] for i in data["instances"]]
    refusal = next(i for i, n in enumerate(names) if n.startswith("refusal world"))
    view.page.select_option("#instance", str(refusal))
    logits, harm = inst(refusal)
    compared += check_shown(view.shown(), logits, harm, lams[5], (0, 0))

    # Flip a leaf: the JS port recomputes; the engine is run here on the flipped harm.
    leaf = 13
    view.page.locator(f'#tree circle[data-node="4:{leaf}"]').click(force=True)
    harm = harm.copy()
    harm[leaf] = 1 - harm[leaf]
    shown = view.shown()
    assert shown["source"] == "port"
    compared += check_shown(shown, logits, harm, lams[5], (4, leaf))

    # Drag π(2 | y_1 = 0) to 0.8: the other children keep their ratios.
    view.page.locator('#tree circle[data-node="1:0"]').click(force=True)
    view.page.locator("#node-table input[data-child='2']").fill("0.8")
    probs = np.exp(logits[1][0] - logits[1][0].max())
    probs /= probs.sum()
    new = np.where(np.arange(3) == 2, 0.8, probs * 0.2 / (1 - probs[2]))
    logits = [z.copy() for z in logits]
    logits[1][0] = np.log(new)
    view.page.locator("#lam").fill("30")
    compared += check_shown(view.shown(), logits, harm, lams[30], (1, 0))

    # The JS port itself on random trees, with determined prefixes, binary and soft harms.
    rng = np.random.default_rng(2026)
    for trial in range(24):
        vocab_size = [2, 3, 4][trial % 3]
        length = int(rng.integers(1, {2: 8, 3: 5, 4: 4}[vocab_size] + 1))  # V**T <= 256
        tau = int(rng.integers(0, length + 1))
        logits = [rng.normal(scale=2.0, size=(vocab_size**l, vocab_size)) for l in range(length)]
        decided = rng.integers(0, 2, vocab_size**tau) if trial % 2 else rng.random(vocab_size**tau)
        harm = np.repeat(decided.astype(np.float64), vocab_size ** (length - tau))  # horizon <= tau
        lam = float(10 ** rng.uniform(-2, 2))
        got = view.page.evaluate(
            "([z, h, V, lam]) => ExplorerPort.analyze(z, h, V, lam)",
            [[z.reshape(-1).tolist() for z in logits], harm.tolist(), vocab_size, lam],
        )
        want = engine(logits, harm, lam)
        for level in range(length + 1):
            compared += close(got["H"][level], want["H"][level], "port H")
            assert got["determined"][level] == want["determined"][level].tolist()
        for level in range(length):
            compared += close(got["G"][level], want["G"][level], "port G")
            compared += close(got["eq_probs"][level], want["eq_probs"][level], "port pi*")
        compared += close(got["I"], want["I"], "port I_t")
        compared += close(got["kl"], want["kl"], "port KL_t")
        compared += close(got["eq_harm"], want["eq_harm"], "port E_pi*[h]")
        assert got["horizon"] == want["horizon"]

    assert compared > 1000  # the comparisons above ran (a count, not a pass by omission)
    assert not view.errors, view.errors
    assert all(u.startswith(("file:", "data:")) for u in view.requests), view.requests
    shot = tmp_path / "explorer.png"
    view.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HARM_HORIZON_ARTIFACTS"):
        shutil.copy(shot, os.path.join(os.environ["HARM_HORIZON_ARTIFACTS"], "explorer.png"))
