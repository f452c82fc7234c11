// saexplain web UI: hover values, the logit lens, the live probe. Data goes into the page as text only
// (textContent, never innerHTML), so corpus text and LLM output cannot become markup.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function tokensEl(tokens, acts, top) {
  const span = el("span", "window");
  tokens.forEach((t, i) => {
    const a = acts[i] || 0;
    const s = el("span", a !== 0 ? "tok on" : "tok", t);
    s.dataset.act = a.toFixed(4);
    const alpha = top > 0 ? Math.min(1, Math.abs(a) / top) : 0;
    s.style.background = `rgba(255, 110, 0, ${alpha.toFixed(3)})`;
    span.appendChild(s);
  });
  return span;
}

function showTip(target, text) {
  const tip = document.getElementById("tip");
  if (!tip) return;
  tip.textContent = text;
  tip.hidden = false;
  const r = target.getBoundingClientRect();
  tip.style.left = `${window.scrollX + r.left}px`;
  tip.style.top = `${window.scrollY + r.bottom + 4}px`;
}

function hideTip() {
  const tip = document.getElementById("tip");
  if (tip) tip.hidden = true;
}

document.addEventListener("mouseover", (ev) => {
  const t = ev.target;
  if (!(t instanceof Element)) return;
  if (t.classList.contains("tok")) showTip(t, `${JSON.stringify(t.textContent)}: ${t.dataset.act}`);
  else if (t.dataset && t.dataset.tip) showTip(t, t.dataset.tip);
});
document.addEventListener("mouseout", (ev) => {
  const t = ev.target;
  if (t instanceof Element && (t.classList.contains("tok") || (t.dataset && t.dataset.tip))) hideTip();
});
document.addEventListener("focusin", (ev) => {
  const t = ev.target;
  if (t instanceof Element && t.dataset && t.dataset.tip) showTip(t, t.dataset.tip);
});

async function postJSON(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

function lensBars(title, pairs, cls) {
  const box = el("div", "lens-col");
  box.appendChild(el("div", "lens-title", title));
  const top = Math.max(...pairs.map((p) => Math.abs(p[1])), 1e-9);
  pairs.forEach(([tok, v]) => {
    const row = el("div", "lens-row");
    const bar = el("span", `lens-bar ${cls}`);
    bar.style.width = `${Math.round(120 * Math.abs(v) / top)}px`;
    row.appendChild(bar);
    row.appendChild(el("code", "", JSON.stringify(tok)));
    row.appendChild(el("span", "note", ` ${v.toFixed(2)}`));
    box.appendChild(row);
  });
  return box;
}

async function loadLens() {
  const box = document.getElementById("lens");
  if (!box) return;
  if (!box.dataset.url) { box.textContent = "no run to read the model from"; return; }
  try {
    const r = await fetch(box.dataset.url);
    const data = await r.json();
    if (!r.ok) throw new Error(data.detail);
    box.textContent = "";
    box.appendChild(lensBars("promoted", data.top, "pos"));
    box.appendChild(lensBars("suppressed", data.bottom, "neg"));
  } catch (e) {
    box.textContent = `logit lens off: ${e.message}`;
    box.classList.add("note");
  }
}

function onSubmit(formId, outId, render) {
  // a probe form: POST its text, show what `render` builds from the answer, or why the probe is off
  const form = document.getElementById(formId);
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById(outId);
    out.textContent = "measuring…";
    try {
      const body = {text: form.elements.text.value};
      if (form.dataset.feature) body.feature = Number(form.dataset.feature);
      const nodes = render(form, await postJSON(form.dataset.url, body));
      out.textContent = "";
      nodes.forEach((n) => out.appendChild(n));
    } catch (e) {
      out.textContent = `probe off: ${e.message}`;
    }
  });
}

function renderProbe(form, data) {
  const top = Number(form.dataset.max) || data.max_act;
  return [tokensEl(data.tokens, data.acts, top),
    el("div", "note", `max ${data.max_act.toFixed(3)} (${(100 * data.max_act / top).toFixed(0)} % of the feature's max) · ${(1000 * data.seconds).toFixed(0)} ms`)];
}

function renderFeatures(form, data) {
  // links go to the SAE's feature pages: they exist for every feature, explained in a run or not
  const page = (f) => `/saes/${form.dataset.cache}/features/${f}`;
  const table = el("table", "per-token");
  data.tokens.forEach((t) => {
    const tr = el("tr");
    tr.appendChild(el("td", "", JSON.stringify(t.token)));
    const td = el("td");
    t.features.forEach(([f, a]) => {
      const link = el("a", "chip", `${f} ${a.toFixed(2)}`);
      link.href = page(f);
      td.appendChild(link);
      td.appendChild(document.createTextNode(" "));
    });
    tr.appendChild(td);
    table.appendChild(tr);
  });
  const ul = el("ul", "top-features");
  data.top.forEach(([f, a, n]) => {
    const li = el("li");
    const link = el("a", "", `feature ${f}`);
    link.href = page(f);
    li.appendChild(link);
    li.appendChild(document.createTextNode(` max ${a.toFixed(3)} on ${n} token(s)`));
    ul.appendChild(li);
  });
  return [el("h3", "", "Strongest over the text"), ul, el("h3", "", "Per token"), table];
}

function watchRun() {
  // a run that is still being written: reload when its stored counts change (or it finishes)
  const live = document.getElementById("live");
  if (!live) return;
  setInterval(async () => {
    try {
      const r = await fetch(live.dataset.url);
      if (!r.ok) return;
      const run = (await r.json()).run;
      const n = (c) => c.ok + c.degraded + c.failed;
      if (`${n(run.explanations)}/${n(run.scores)}` !== live.dataset.counts || run.status !== "running") {
        window.location.reload();
      }
    } catch (e) { /* the server may be busy; try again at the next tick */ }
  }, Number(live.dataset.poll) || 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  watchRun();
  loadLens();
  onSubmit("probe-form", "probe-out", renderProbe);
  onSubmit("features-form", "features-out", renderFeatures);
});
