// harm-horizon explorer: the page's script (inlined by experiments/explorer.py; no network).
//
// ExplorerPort is a small JavaScript port of the exact tree computation of toy_lm/engines/tree.py, in
// the same order of operations: log-softmax of each level table, prefix probabilities P_l, the
// backward recursion H_{l-1}(u) = sum_v pi(v|u) H_l(uv) (children taken relative to the first
// child, so determined prefixes give exact zeros), increments Delta_t, logit gradients
// G(u)_v = P(u) pi(v|u) Delta_t(uv), I_t = E[Delta_t^2], determined masks from the range of h,
// the horizon, log Z_l = log E[exp(-h/lambda) | prefix], pi*_lambda and KL_t(pi*_lambda || pi).
// It runs only after an edit (flipped leaf, dragged probability); the instance as built shows
// the Python engine's values. tests/test_explorer.py holds the port to the engine within 1e-12.
"use strict";

const ExplorerPort = (() => {
  function logSoftmax(z, V) {
    const out = new Array(z.length);
    for (let r = 0; r < z.length; r += V) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, z[r + v]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(z[r + v] - m);
      const lse = Math.log(s);
      for (let v = 0; v < V; v++) out[r + v] = (z[r + v] - m) - lse;
    }
    return out;
  }

  function prefixProbs(logp, V) {
    const P = [[1.0]];
    for (let l = 0; l < logp.length; l++) {
      const prev = P[l], next = new Array(prev.length * V);
      for (let u = 0; u < prev.length; u++)
        for (let v = 0; v < V; v++) next[u * V + v] = prev[u] * Math.exp(logp[l][u * V + v]);
      P.push(next);
    }
    return P;
  }

  // One backward step: parent (n,) and delta (n*V,) from child values (n*V,).
  function backwardStep(logpLevel, child, V) {
    const n = child.length / V, parent = new Array(n), delta = new Array(child.length);
    for (let u = 0; u < n; u++) {
      const ref = child[u * V];
      let mean = 0;
      for (let v = 0; v < V; v++) mean += Math.exp(logpLevel[u * V + v]) * (child[u * V + v] - ref);
      parent[u] = ref + mean;
      for (let v = 0; v < V; v++) delta[u * V + v] = (child[u * V + v] - ref) - mean;
    }
    return [parent, delta];
  }

  function determined(harm, V, T) {
    let lo = harm.slice(), hi = harm.slice();
    const masks = [harm.map(() => 1)];
    for (let l = 0; l < T; l++) {
      const n = lo.length / V, nlo = new Array(n), nhi = new Array(n), mask = new Array(n);
      for (let u = 0; u < n; u++) {
        nlo[u] = Math.min(...lo.slice(u * V, u * V + V));
        nhi[u] = Math.max(...hi.slice(u * V, u * V + V));
        mask[u] = nlo[u] === nhi[u] ? 1 : 0;
      }
      masks.push(mask);
      lo = nlo; hi = nhi;
    }
    return masks.reverse();
  }

  function klPerPosition(logpA, logpB, V) {
    const P = prefixProbs(logpA, V), out = [];
    for (let l = 0; l < logpA.length; l++) {
      let total = 0;
      for (let u = 0; u < P[l].length; u++) {
        let kl = 0;
        for (let v = 0; v < V; v++) {
          const a = logpA[l][u * V + v];
          kl += Math.exp(a) * (a - logpB[l][u * V + v]);
        }
        total += P[l][u] * kl;
      }
      out.push(total);
    }
    return out;
  }

  // Everything the page shows, for level logits (T flat tables), harm (V**T) and lambda.
  function analyze(logits, harm, V, lam) {
    const T = logits.length;
    const logp = logits.map((z) => logSoftmax(z, V));
    const P = prefixProbs(logp, V);
    const H = new Array(T + 1), D = new Array(T);
    H[T] = harm.slice();
    for (let l = T - 1; l >= 0; l--) {
      const [parent, delta] = backwardStep(logp[l], H[l + 1], V);
      H[l] = parent; D[l] = delta;
    }
    const G = [], I = [];
    for (let l = 0; l < T; l++) {
      const g = new Array(D[l].length);
      let info = 0;
      for (let u = 0; u < P[l].length; u++)
        for (let v = 0; v < V; v++) {
          const i = u * V + v;
          g[i] = P[l][u] * Math.exp(logp[l][i]) * D[l][i];
        }
      for (let i = 0; i < D[l].length; i++) info += P[l + 1][i] * D[l][i] ** 2;
      G.push(g); I.push(info);
    }
    const det = determined(harm, V, T);
    let horizon = T;
    for (let l = 0; l <= T; l++) if (det[l].every((d) => d === 1)) { horizon = l; break; }
    const out = { H, G, I, determined: det, horizon, expected_harm: H[0][0] };
    if (lam !== null && lam !== undefined) {
      const logz = new Array(T + 1);
      logz[T] = harm.map((h) => -h / lam);
      for (let l = T - 1; l >= 0; l--) {
        const child = logz[l + 1], n = child.length / V, parent = new Array(n);
        for (let u = 0; u < n; u++) {
          let top = -Infinity, constant = true;
          for (let v = 0; v < V; v++) top = Math.max(top, child[u * V + v]);
          for (let v = 0; v < V; v++) if (child[u * V + v] !== top) constant = false;
          let s = 0;
          for (let v = 0; v < V; v++) s += Math.exp(logp[l][u * V + v] + child[u * V + v] - top);
          parent[u] = constant ? top : top + Math.log(s);
        }
        logz[l] = parent;
      }
      const eq = [];
      for (let l = 0; l < T; l++) {
        const child = logz[l + 1], t = new Array(child.length);
        for (let u = 0; u < child.length / V; u++) {
          let constant = true;
          for (let v = 0; v < V; v++) if (child[u * V + v] !== child[u * V]) constant = false;
          for (let v = 0; v < V; v++) {
            const i = u * V + v;
            t[i] = constant ? logp[l][i] : logp[l][i] + child[i] - logz[l][u];
          }
        }
        eq.push(t);
      }
      const eqLogp = eq.map((z) => logSoftmax(z, V));  // as the engine's log_policy(eq)
      // Against log-softmax(log pi), as the engine's per_position_kl(eq, log_policy(logits)):
      // exactly 0 at prefixes where pi*_lambda = pi.
      out.kl = klPerPosition(eqLogp, logp.map((z) => logSoftmax(z, V)), V);
      let eqH = harm.slice();
      for (let l = T - 1; l >= 0; l--) eqH = backwardStep(eqLogp[l], eqH, V)[0];
      out.eq_harm = eqH[0];
      out.eq_probs = eqLogp.map((z) => z.map(Math.exp));
    }
    return out;
  }

  return { analyze, logSoftmax };
})();

// ------------------------------------------------------------------------------------------
// The page.
const Explorer = (() => {
  const data = EXPLORER_DATA;
  const state = { index: 0, lamIndex: 20, logits: null, harm: null, edited: false, selected: 0 };
  const $ = (id) => document.getElementById(id);
  const fmt = (x) => (x === 0 ? "0" : Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4
    ? x.toFixed(4) : x.toExponential(3));
  const NS = "http://www.w3.org/2000/svg";

  function inst() { return data.instances[state.index]; }

  function loadInstance(index) {
    state.index = index;
    state.logits = inst().logits.map((z) => z.slice());
    state.harm = inst().harm.slice();
    state.edited = false;
    state.selected = 0;
    render();
  }

  // The values shown: the engine's for the instance as built, the JS port's after an edit.
  function values() {
    const lam = data.lams[state.lamIndex];
    if (!state.edited) {
      const e = inst().engine, at = e.lams[state.lamIndex];
      return { H: e.H, G: e.G, I: e.I, determined: e.determined, horizon: e.horizon,
               expected_harm: e.expected_harm, kl: at.kl, eq_harm: at.eq_harm,
               eq_probs: at.eq_probs, lam, source: "engine" };
    }
    const r = ExplorerPort.analyze(state.logits, state.harm, inst().V, lam);
    return Object.assign(r, { lam, source: "port" });
  }

  function colour(h) {  // blue (0) to red (1)
    const r = Math.round(40 + 200 * h), b = Math.round(220 - 190 * h);
    return `rgb(${r},70,${b})`;
  }

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }

  function cell(row, value, name) {
    const td = document.createElement("td");
    td.textContent = typeof value === "number" ? fmt(value) : value;
    if (typeof value === "number") td.dataset.value = String(value);
    if (name) td.dataset.name = name;
    row.appendChild(td);
    return td;
  }

  function prefixLabel(level, u, V) {
    const tokens = [];
    for (let i = 0; i < level; i++) { tokens.unshift(u % V); u = Math.floor(u / V); }
    return level === 0 ? "(empty prefix)" : "y = " + tokens.join(" ");
  }

  function drawTree(val) {
    const { V, T } = inst(), tree = $("tree");
    tree.innerHTML = "";
    const leaves = V ** T, gap = Math.max(6, Math.min(18, 640 / leaves));
    const height = leaves * gap + 20, width = 90 + T * 120;
    tree.setAttribute("width", width); tree.setAttribute("height", height);
    const ys = [Array.from({ length: leaves }, (_, i) => 10 + gap * (i + 0.5))];
    for (let l = T - 1; l >= 0; l--) {
      const below = ys[0], level = [];
      for (let u = 0; u < below.length / V; u++)
        level.push(below.slice(u * V, u * V + V).reduce((a, b) => a + b, 0) / V);
      ys.unshift(level);
    }
    const x = (l) => 30 + l * 120;
    for (let l = 0; l < T; l++) {
      const probs = ExplorerPort.logSoftmax(state.logits[l], V).map(Math.exp);
      for (let u = 0; u < ys[l].length; u++)
        for (let v = 0; v < V; v++) {
          const i = u * V + v;
          const line = svg("line", { x1: x(l), y1: ys[l][u], x2: x(l + 1), y2: ys[l + 1][i],
            stroke: "#999", "stroke-width": 0.3 + 4 * probs[i] }, tree);
          svg("title", {}, line).textContent =
            `pi(${v} | ${prefixLabel(l, u, V)}) = ${fmt(probs[i])}, G = ${fmt(val.G[l][i])}`;
        }
    }
    let id = 0;
    for (let l = 0; l <= T; l++)
      for (let u = 0; u < ys[l].length; u++, id++) {
        const c = svg("circle", { cx: x(l), cy: ys[l][u], r: l === T ? Math.min(5, gap / 2) : 6,
          fill: colour(val.H[l][u]), "data-node": `${l}:${u}`, "data-h": String(val.H[l][u]) },
          tree);
        const classes = [];
        if (val.determined[l][u]) classes.push("determined");
        if (state.selected === id) classes.push("selected");
        c.setAttribute("class", classes.join(" "));
        svg("title", {}, c).textContent = `${prefixLabel(l, u, V)}: H = ${fmt(val.H[l][u])}` +
          (val.determined[l][u] ? " (determined)" : "") + (l === T ? " — click to flip h" : "");
        const nodeId = id;
        c.addEventListener("click", () => {
          if (l === T) {
            state.harm[u] = 1 - state.harm[u];
            state.edited = true;
          }
          state.selected = nodeId;
          render();
        });
      }
    for (let l = 0; l <= T; l++) {
      const t = svg("text", { x: x(l) - 12, y: height - 2, "font-size": 11 }, tree);
      t.textContent = `l=${l}`;
    }
  }

  function selectedNode() {
    const { V } = inst();
    let id = state.selected, l = 0;
    while (id >= V ** l) { id -= V ** l; l++; }
    return [l, id];
  }

  function drawNode(val) {
    const { V, T } = inst(), box = $("node"), [l, u] = selectedNode();
    box.innerHTML = "";
    const h = document.createElement("h3");
    h.textContent = `${prefixLabel(l, u, V)} (level ${l})`;
    box.appendChild(h);
    const p = document.createElement("p");
    p.id = "node-h";
    p.dataset.value = String(val.H[l][u]);
    p.textContent = `H_${l} = ${fmt(val.H[l][u])}` + (val.determined[l][u] ? ", determined" : "");
    box.appendChild(p);
    if (l === T) return;
    const probs = ExplorerPort.logSoftmax(state.logits[l], V).map(Math.exp);
    const table = document.createElement("table");
    table.id = "node-table";
    table.innerHTML = "<tr><th>v</th><th>π(v | prefix)</th><th>drag π</th><th>G_v = ∂E[h]/∂z_v" +
      `</th><th>π*_λ(v | prefix)</th></tr>`;
    for (let v = 0; v < V; v++) {
      const i = u * V + v, row = document.createElement("tr");
      cell(row, String(v));
      cell(row, probs[i], "pi");
      const td = document.createElement("td"), range = document.createElement("input");
      Object.assign(range, { type: "range", min: "0.001", max: "0.999", step: "0.001",
        value: String(probs[i]) });
      range.dataset.child = String(v);
      range.addEventListener("change", () => setProbability(l, u, v, Number(range.value)));
      td.appendChild(range); row.appendChild(td);
      cell(row, val.G[l][i], "G");
      cell(row, val.eq_probs[l][i], "eq");
      table.appendChild(row);
    }
    box.appendChild(table);
  }

  // pi(v|u) := q, the other children rescaled to keep their ratios (logits = log-probabilities).
  function setProbability(l, u, v, q) {
    const { V } = inst();
    const probs = ExplorerPort.logSoftmax(state.logits[l], V).map(Math.exp);
    const rest = 1 - probs[u * V + v];
    for (let w = 0; w < V; w++) {
      const p = w === v ? q : rest > 0 ? probs[u * V + w] * (1 - q) / rest : (1 - q) / (V - 1);
      state.logits[l][u * V + w] = Math.log(p);
    }
    state.edited = true;
    render();
  }

  function drawPositions(val) {
    const { T } = inst(), table = $("positions");
    table.innerHTML = "<tr><th>position t</th><th>I_t</th><th>KL_t(π*_λ ‖ π)</th>" +
      "<th>I_t / (2λ²)</th></tr>";
    for (let t = 1; t <= T; t++) {
      const row = document.createElement("tr");
      row.dataset.position = String(t);
      cell(row, String(t) + (t > val.horizon ? " (beyond τ*)" : ""));
      cell(row, val.I[t - 1], "I");
      cell(row, val.kl[t - 1], "kl");
      cell(row, val.I[t - 1] / (2 * val.lam ** 2), "approx");
      table.appendChild(row);
    }
    const chart = $("chart");
    chart.innerHTML = "";
    const series = [["I", "#555"], ["kl", "#0072b2"], ["approx", "#e69f00"]];
    const all = [];
    for (let t = 0; t < T; t++)
      all.push(val.I[t], val.kl[t], val.I[t] / (2 * val.lam ** 2));
    const pos = all.filter((x) => x > 0), top = Math.log10(Math.max(...pos, 1e-12));
    const bottom = Math.min(top - 1, Math.log10(Math.min(...pos, 1)) - 0.5);
    const w = 380 / T, y = (x) => 190 - 170 * (Math.log10(x) - bottom) / (top - bottom);
    for (let t = 0; t < T; t++) {
      series.forEach(([name, colourName], k) => {
        const x = name === "I" ? val.I[t] : name === "kl" ? val.kl[t] : val.I[t] / (2 * val.lam ** 2);
        if (!(x > 0)) return;
        svg("rect", { x: 30 + t * w + k * w / 4, y: y(x), width: w / 4, height: 190 - y(x),
          fill: colourName }, chart);
      });
      svg("text", { x: 30 + t * w + w / 3, y: 205, "font-size": 11 }, chart).textContent = `t=${t + 1}`;
    }
    svg("line", { x1: 30 + val.horizon * w, x2: 30 + val.horizon * w, y1: 10, y2: 195,
      stroke: "#000", "stroke-dasharray": "4 3" }, chart);
    const label = svg("text", { x: 26 + val.horizon * w, y: 20, "font-size": 11,
      "text-anchor": "end" }, chart);
    label.textContent = `τ* = ${val.horizon}`;
    svg("text", { x: 30, y: 218, "font-size": 10 }, chart).textContent =
      "log scale: grey I_t, blue KL_t(π*_λ‖π), orange I_t/(2λ²)";
  }

  function drawSummary(val) {
    const box = $("summary");
    box.innerHTML = "";
    const table = document.createElement("table");
    table.id = "summary-table";
    for (const [label, value, name] of [
      ["E[h] = H_0", val.expected_harm, "expected_harm"], ["horizon τ*", val.horizon, "horizon"],
      ["Var(h) = Σ_t I_t", val.I.reduce((a, b) => a + b, 0), "var"],
      ["λ", val.lam, "lam"], ["E_{π*_λ}[h]", val.eq_harm, "eq_harm"]]) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = label; row.appendChild(th);
      const td = cell(row, name === "horizon" ? String(value) : value, name);
      if (name === "horizon") td.dataset.value = String(value);
      table.appendChild(row);
    }
    box.appendChild(table);
  }

  function render() {
    const val = values();
    $("lam-value").textContent = `λ = ${fmt(val.lam)}`;
    $("source").textContent = val.source === "engine"
      ? "values: the exact engine (Python, float64), precomputed"
      : "edited: values recomputed in the browser (JS port of the exact tree engine)";
    $("source").className = val.source === "engine" ? "" : "edited";
    $("source").dataset.source = val.source;
    $("instance-note").textContent = inst().note;
    drawTree(val); drawSummary(val); drawPositions(val); drawNode(val);
  }

  function init() {
    const select = $("instance");
    data.instances.forEach((d, i) => {
      const option = document.createElement("option");
      option.value = String(i); option.textContent = d.name;
      select.appendChild(option);
    });
    select.addEventListener("change", () => loadInstance(Number(select.value)));
    const lam = $("lam");
    lam.max = String(data.lams.length - 1);
    lam.value = String(state.lamIndex);
    lam.addEventListener("input", () => { state.lamIndex = Number(lam.value); render(); });
    $("reset").addEventListener("click", () => loadInstance(state.index));
    loadInstance(0);
  }

  return { init, state, setProbability, values };
})();

document.addEventListener("DOMContentLoaded", Explorer.init);
