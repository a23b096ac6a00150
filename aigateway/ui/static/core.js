// The dashboard's small helpers: building DOM nodes, talking to the admin API, tables,
// figures. Every string from the server (user and key names, model names, error texts) is
// set as text, never parsed as HTML, so a name like <img src=x onerror=...> shows as written.

export const root = document.documentElement;

export const PATHS = {
  ui: root.dataset.ui,
  admin: root.dataset.admin,
  api: root.dataset.api,
  currency: root.dataset.currency,
};

export const state = { me: null };

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function money(micro) {
  if (micro === null || micro === undefined) return "-";
  const sign = micro < 0 ? "-" : "";
  const abs = Math.abs(micro);
  return `${sign}${Math.floor(abs / 1e6)}.${String(abs % 1e6).padStart(6, "0")}`;
}

export function number(n) {
  return n === null || n === undefined ? "-" : Number(n).toLocaleString("en");
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function errorText(doc) {
  if (!doc) return "";
  if (typeof doc.error === "string") return doc.error;
  if (doc.error && typeof doc.error.message === "string") return doc.error.message;
  return "";
}

export async function api(method, path, body) {
  const headers = { "X-Requested-With": "aigateway" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let doc = null;
  try {
    doc = await resp.json();
  } catch (_) {
    doc = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, errorText(doc) || `HTTP ${resp.status}`);
  return doc;
}

// A table of `rows`: each column a title and a cell(row) giving text or a node. Text is
// shown in a box that cuts it with an ellipsis when longer than its column (whole in its
// title, when focused, and when copied); `wrap: true` lets a column of several words wrap
// between words instead, `keep: true` keeps a short one (a time) whole on one line;
// `act: true` marks the row's buttons (kept in sight while a wide table scrolls). Each
// cell names its column (data-label) for the phone's cards.
export function table(columns, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  const kind = (c) => (c.num ? "num" : c.act ? "act" : null);
  const head = el("tr", {}, columns.map((c) => el("th", { class: kind(c), scope: "col" }, c.title)));
  const body = rows.map((row) =>
    el(
      "tr",
      {},
      columns.map((c) => el("td", { class: kind(c), "data-label": c.title }, cellContent(c.cell(row), c))),
    ),
  );
  // (a table of few columns gives each value more room before cutting it)
  const roomy = columns.length <= 6 ? "roomy" : null;
  const wrap = el("div", { class: "table-wrap" }, el("table", { class: roomy }, el("thead", {}, head), el("tbody", {}, body)));
  requestAnimationFrame(() => markCut(wrap));
  return wrap;
}

export function cellContent(value, column) {
  if (value instanceof Node) return value;
  const text = value === null || value === undefined ? "" : String(value);
  if (column.num || column.keep) return el("span", { class: "keep" }, text);
  if (column.wrap) return el("span", { class: "wrap" }, text);
  return el("span", { class: column.wide ? "cut wide" : "cut", title: text }, text);
}

// Values in one cell, one above the other (all but the first muted), each text cut alike;
// a node is shown as it is.
export function stacked(first, ...more) {
  const cut = (text, cls) => el("span", { class: cls, title: text }, text);
  return el("div", { class: "stacked" }, cut(first, "cut"), more.map((v) => (v instanceof Node ? v : cut(v, "cut muted"))));
}

// A name in running text (a heading): cut as in a table when longer than the line.
export function named(text) {
  return el("span", { class: "cut", title: text }, text);
}

// A cut value can be focused (to read it whole) only when it is cut: measured after layout.
export function markCut(scope) {
  for (const box of scope.querySelectorAll(".cut")) {
    if (box.scrollWidth > box.clientWidth + 1) box.setAttribute("tabindex", "0");
    else if (box !== document.activeElement) box.removeAttribute("tabindex");
  }
}

// Opens `content` in a row of its own right below the row `tr` (one at a time per
// table), so a form or an error shows beside what it is about.
export function openBelow(tr, content) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("below")) next.remove();
  for (const other of tr.parentElement.querySelectorAll("tr.below")) other.remove();
  const row = el("tr", { class: "below" }, el("td", { colspan: tr.children.length }, content));
  tr.after(row);
  // In a table wider than its box (scrolled sideways), what opens stays within the box.
  const box = tr.closest(".table-wrap");
  if (box && box.scrollWidth > box.clientWidth) content.style.width = `${box.clientWidth - 16}px`;
  return row;
}

export function stat(label, value, hint) {
  return el("div", { class: "stat" }, el("div", { class: "label", title: hint }, label), el("div", { class: "value", title: value }, value));
}

// Percentiles here come from the hourly sums' histograms: each within a bucket (±19%).
export const ESTIMATED = "Estimated from hourly sums, within ±19%; the CLI's --usage report gives exact ones";

export function estimated(p50, p95) {
  return p50 === null || p50 === undefined ? "- / -" : `≈ ${p50} / ${p95 ?? "-"}`;
}

export function usageStats(title, u) {
  return [
    el("h2", {}, title),
    el(
      "div",
      { class: "grid" },
      stat("Requests", number(u.requests)),
      stat("Tokens", number(u.total_tokens)),
      stat(`Cost (${PATHS.currency})`, money(u.cost)),
      stat("Errors", number(u.errors)),
      stat("Left early", number(u.client_gone)),
      stat("p50 / p95 ms", estimated(u.p50_ms, u.p95_ms), ESTIMATED),
      stat("First byte p50 / p95 ms", estimated(u.ttfb_p50_ms, u.ttfb_p95_ms), ESTIMATED),
    ),
  ];
}

// Shows the current page again (after a change); the shell registers how.
let rerender = () => {};

export function onRefresh(render) {
  rerender = render;
}

export function refresh() {
  rerender();
}
