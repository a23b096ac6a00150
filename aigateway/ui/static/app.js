// aigateway dashboard. No framework: a few views built with DOM calls. Every string
// from the server (user and key names, model names, error texts) is set as text, never
// parsed as HTML, so a name like <img src=x onerror=...> shows as written.
"use strict";

const root = document.documentElement;
const PATHS = {
  ui: root.dataset.ui,
  admin: root.dataset.admin,
  api: root.dataset.api,
  currency: root.dataset.currency,
};
const state = { me: null };

// --- small helpers ------------------------------------------------------------------

function el(tag, attrs, ...children) {
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

function money(micro) {
  if (micro === null || micro === undefined) return "-";
  const sign = micro < 0 ? "-" : "";
  const abs = Math.abs(micro);
  return `${sign}${Math.floor(abs / 1e6)}.${String(abs % 1e6).padStart(6, "0")}`;
}

function number(n) {
  return n === null || n === undefined ? "-" : Number(n).toLocaleString("en");
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function errorText(doc) {
  if (!doc) return "";
  if (typeof doc.error === "string") return doc.error;
  if (doc.error && typeof doc.error.message === "string") return doc.error.message;
  return "";
}

async function api(method, path, body) {
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
function table(columns, rows, empty) {
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

function cellContent(value, column) {
  if (value instanceof Node) return value;
  const text = value === null || value === undefined ? "" : String(value);
  if (column.num || column.keep) return el("span", { class: "keep" }, text);
  if (column.wrap) return el("span", { class: "wrap" }, text);
  return el("span", { class: column.wide ? "cut wide" : "cut", title: text }, text);
}

// Values in one cell, one above the other (all but the first muted), each cut alike.
function stacked(first, ...more) {
  const cut = (text, cls) => el("span", { class: cls, title: text }, text);
  return el("div", { class: "stacked" }, cut(first, "cut"), more.map((text) => cut(text, "cut muted")));
}

// A name in running text (a heading): cut as in a table when longer than the line.
function named(text) {
  return el("span", { class: "cut", title: text }, text);
}

// A cut value can be focused (to read it whole) only when it is cut: measured after layout.
function markCut(scope) {
  for (const box of scope.querySelectorAll(".cut")) {
    if (box.scrollWidth > box.clientWidth + 1) box.setAttribute("tabindex", "0");
    else if (box !== document.activeElement) box.removeAttribute("tabindex");
  }
}

// Opens `content` in a row of its own right below the row `tr` (one at a time per
// table), so a form or an error shows beside what it is about.
function openBelow(tr, content) {
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

function stat(label, value, hint) {
  return el("div", { class: "stat" }, el("div", { class: "label", title: hint }, label), el("div", { class: "value", title: value }, value));
}

// Percentiles here come from the hourly sums' histograms: each within a bucket (±19%).
const ESTIMATED = "Estimated from hourly sums, within ±19%; the CLI's --usage report gives exact ones";

function estimated(p50, p95) {
  return p50 === null || p50 === undefined ? "- / -" : `≈ ${p50} / ${p95 ?? "-"}`;
}

function usageStats(title, u) {
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

// An SVG bar chart of requests per hour (errors on top), built with DOM calls.
// One chart per measure, side by side; a period with no request says so instead.
function charts(series, hours, title) {
  if (!series.length) return el("p", { class: "empty" }, `No requests in the ${title}.`);
  return el(
    "div",
    { class: "grid charts" },
    el("div", { class: "card" }, chart(series, hours, `Requests per hour, ${title}`)),
    el("div", { class: "card" }, chart(series, hours, `Tokens per hour, ${title}`, "tokens")),
    el("div", { class: "card" }, chart(series, hours, `Cost per hour (${PATHS.currency}), ${title}`, "cost", money)),
  );
}

function chart(series, hours, label, field = "requests", show = String) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 400;
  const height = 140;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const now = Date.now() / 1000;
  const first = Math.floor((now - hours * 3600) / 3600) * 3600;
  const byStart = new Map(series.map((b) => [b.start, b]));
  const max = Math.max(1, ...series.map((b) => b[field]));
  const slot = width / (hours + 1);
  for (let i = 0; i <= hours; i++) {
    const bucket = byStart.get(first + i * 3600);
    if (!bucket) continue;
    const h = ((height - 14) * bucket[field]) / max;
    const e = field === "requests" ? ((height - 14) * bucket.errors) / max : 0;
    for (const [cls, top, size] of [["bar", height - 14 - h, h - e], ["err", height - 14 - e, e]]) {
      if (size <= 0) continue;
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("class", cls);
      rect.setAttribute("x", String(i * slot + 1));
      rect.setAttribute("y", String(top));
      rect.setAttribute("width", String(Math.max(1, slot - 2)));
      rect.setAttribute("height", String(size));
      const tip = document.createElementNS(NS, "title");
      tip.textContent = `${new Date(bucket.start * 1000).toISOString().slice(0, 13)}:00 UTC: ${bucket.requests} requests, ${bucket.errors} errors, ${bucket.tokens} tokens, cost ${money(bucket.cost)}`;
      rect.append(tip);
      svg.append(rect);
    }
  }
  const caption = document.createElementNS(NS, "text");
  caption.setAttribute("x", "2");
  caption.setAttribute("y", String(height - 2));
  caption.textContent = `${label} (highest ${show(max)})`;
  svg.append(caption);
  return svg;
}

// --- views ----------------------------------------------------------------------------

const VIEWS = {
  overview: { title: "Overview", admin: true, render: overview },
  keys: { title: "Keys", admin: true, render: keysView },
  users: { title: "Users", admin: true, render: usersView },
  models: { title: "Models", admin: false, render: modelsView },
  usage: { title: "Usage", admin: false, render: usageView },
  me: { title: "My usage", admin: false, render: myUsage },
  playground: { title: "Playground", admin: false, render: playground },
};

async function overview(view) {
  // Top users and models of the last 7 days: the page never reads the whole history.
  const weekAgo = Math.floor(Date.now() / 1000) - 7 * 86400;
  // Each upstream's state and loaded models come from the gateway's own last look
  // (/admin/upstreams), never a relayed call: that would be recorded as the admin's
  // usage, and reach the upstream on every refresh.
  const [stats, day, week, pool] = await Promise.all([
    api("GET", `${PATHS.admin}/stats?since=${weekAgo}&parts=last_24h,last_7d,per_user,per_model,refused`),
    api("GET", `${PATHS.admin}/series?hours=24`),
    api("GET", `${PATHS.admin}/series?hours=168`),
    api("GET", `${PATHS.admin}/upstreams`),
  ]);
  const several = pool.upstreams.length > 1;
  view.append(
    el("h1", {}, "Overview"),
    el(
      "div",
      { class: "grid", id: "ollama" },
      stat(several ? "Upstreams" : "Upstream", upstreamStates(pool.upstreams)),
      stat("Models loaded", loadedModels(pool.upstreams)),
      stat("In flight now", number(stats.in_flight)),
    ),
    ...upstreamTable(pool),
    ...usageStats("Last 24 hours", stats.last_24h),
    charts(day.series, 24, "last 24 hours"),
    ...usageStats("Last 7 days", stats.last_7d),
    charts(week.series, 168, "last 7 days"),
    el("h2", {}, "Top users, last 7 days"),
    table(
      [
        { title: "User", cell: (r) => r.user },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "Tokens", num: true, cell: (r) => number(r.total_tokens) },
        { title: `Cost (${PATHS.currency})`, num: true, cell: (r) => money(r.cost) },
      ],
      [...stats.per_user].sort((a, b) => b.requests - a.requests).slice(0, 10),
      "No usage yet.",
    ),
    el("h2", {}, "Top models, last 7 days"),
    table(
      [
        { title: "Model", cell: (r) => r.model ?? "(none)" },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "p95 ms (est.)", num: true, cell: (r) => r.p95_ms ?? "-" },
        { title: "Errors", num: true, cell: (r) => number(r.errors) },
      ],
      [...stats.per_model].sort((a, b) => b.requests - a.requests).slice(0, 10),
      "No usage yet.",
    ),
    ...refusedTables(stats.refused, "last 7 days"),
  );
}

// Requests the gateway refused itself (no key, limits, budgets, allow-lists), by reason
// and by user; those refused before a key was known count under "(no key)".
function refusedTables(refused, span) {
  const byUser = [...refused.per_user];
  if (refused.without_key.requests) byUser.push({ user: "(no key)", ...refused.without_key });
  const reasons = (r) => Object.entries(r.by_reason).map(([reason, n]) => `${reason} ${number(n)}`).join(", ");
  return [
    ...refusedBrief(refused, span),
    el("h2", {}, `Refused per user, ${span}`),
    table(
      [
        { title: "User", cell: (r) => r.user },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "Reasons", cell: reasons },
      ],
      byUser.sort((a, b) => b.requests - a.requests).slice(0, 10),
      "Nothing refused.",
    ),
  ];
}

// The refusals of one filter, key or user: a line with the total and a table by reason;
// `null` (a filter by model, route or status: refusals have none) says so.
function refusedBrief(refused, span) {
  if (refused === null || refused === undefined) {
    return [el("h2", {}, "Refused"), el("p", { class: "empty refused-none" }, "Refused requests are not counted by model, route or status.")];
  }
  return [
    el("h2", {}, `Refused, ${span}: ${number(refused.requests)}`),
    table(
      [
        { title: "Reason", cell: (r) => r[0] },
        { title: "Requests", num: true, cell: (r) => number(r[1]) },
      ],
      Object.entries(refused.by_reason).sort((a, b) => b[1] - a[1]),
      "Nothing refused.",
    ),
  ];
}

// Several upstreams: each one's state in a table (one's is in the Overview's first line).
function upstreamTable(pool) {
  if (!pool.checked) return [];
  return [
    el("h2", {}, "Upstreams"),
    table(
      [
        { title: "Name", cell: (u) => u.name },
        { title: "Kind", cell: (u) => u.kind },
        { title: "State", cell: (u) => (u.status === "up" ? "up" : `out: ${u.reason}`) },
        { title: "In flight", num: true, cell: (u) => number(u.in_flight) },
        { title: "Waiting", num: true, cell: (u) => number(u.queued) },
        { title: "Check ms", num: true, cell: (u) => u.latency_ms ?? "-" },
        { title: "Loaded", cell: (u) => (u.loaded.length ? u.loaded.join(", ") : "none") },
      ],
      pool.upstreams,
      "No upstreams.",
    ),
  ];
}

// "ollama up", or with several "gpu1 up, gpu2 out: why": each upstream by its name.
function upstreamStates(upstreams) {
  const one = (u) => (u.status === "up" ? `${u.name} up` : `${u.name} out${u.reason ? `: ${u.reason}` : ""}`);
  return upstreams.map(one).join(", ") || "none";
}

// The loaded models; with several upstreams, each one's by its name.
function loadedModels(upstreams) {
  const names = (u) => (u.loaded.length ? u.loaded.join(", ") : "none");
  if (upstreams.length === 1) return names(upstreams[0]);
  return upstreams.map((u) => `${u.name}: ${names(u)}`).join("; ") || "none";
}

async function keysView(view) {
  const [doc, stats] = await Promise.all([
    api("GET", `${PATHS.admin}/keys`),
    api("GET", `${PATHS.admin}/stats?since=${Math.floor(Date.now() / 1000) - 86400}&parts=per_key,rate_limits`),
  ]);
  const use = new Map(stats.rate_limits.map((u) => [u.key_id, u]));
  const spend = new Map(stats.per_key.map((k) => [k.key_id, k.cost]));
  const secretBox = el("div", { id: "new-key", "aria-live": "polite" });
  const search = el("input", { id: "key-search", type: "search", placeholder: "user or key name" });
  const statusFilter = el(
    "select",
    { id: "key-status" },
    ["active", "all", "revoked", "expired", "user disabled"].map((v) => el("option", { value: v }, v)),
  );
  const roleFilter = el("select", { id: "key-role" }, ["all", "admin", "user"].map((v) => el("option", { value: v }, v)));
  const listing = el("div", {});
  const showList = () => {
    const q = search.value.trim().toLowerCase();
    const rows = doc.keys.filter(
      (k) =>
        (!q || k.user.toLowerCase().includes(q) || k.key_name.toLowerCase().includes(q)) &&
        (statusFilter.value === "all" || k.status === statusFilter.value) &&
        (roleFilter.value === "all" || k.role === roleFilter.value),
    );
    listing.replaceChildren(
      table(
        [
          { title: "User / key", cell: (k) => stacked(k.user, k.key_name, `${k.prefix}…`) },
          { title: "Role / status", cell: (k) => stacked(k.role, k.status, `id ${k.id}`) },
          { title: "Models", cell: (k) => (k.models ? k.models.join(", ") : "all") },
          { title: "Use now of its limits", wrap: true, cell: (k) => useText(use.get(k.id)) },
          { title: `Spent 24 h (${PATHS.currency})`, num: true, cell: (k) => money(spend.get(k.id) ?? 0) },
          { title: `Budget (${PATHS.currency})`, wrap: true, cell: (k) => budgetText(k.budget, "") },
          {
            title: "Expires / last used (UTC)",
            cell: (k) => el("div", { class: "stacked" }, el("span", { class: "keep" }, utcText(k.expires) || "never"), el("span", { class: "keep muted" }, utcText(k.last_used) || "never used")),
          },
          { title: "Actions", act: true, cell: (k) => (k.status === "active" ? keyActions(k) : "") },
        ],
        rows,
        doc.keys.length ? "No key matches." : "No keys yet: create the first one above.",
      ),
    );
  };
  search.addEventListener("input", showList);
  statusFilter.addEventListener("change", showList);
  roleFilter.addEventListener("change", showList);
  const fresh = keySpecs({}, true);
  const created = (made, form) => {
    const secret = el("div", { class: "secret", id: "new-key-value" }, made.key);
    const copy = el("button", { type: "button", class: "quiet" }, "Copy");
    copy.addEventListener("click", async () => {
      await navigator.clipboard.writeText(made.key);
      copy.textContent = "Copied";
    });
    const done = el("button", { type: "button" }, "I have stored it");
    done.addEventListener("click", () => secretBox.replaceChildren());
    secretBox.replaceChildren(
      el(
        "div",
        { class: "card" },
        el("h2", {}, "New key for ", named(`${made.user}/${made.key_name}`)),
        el("p", {}, "Store it now: it is shown this once and can never be shown again."),
        secret,
        el("div", { class: "row" }, copy, done),
      ),
    );
    doc.keys.push(made);
    form.reset();
    showList();
  };
  const form = changeForm(
    "create-key",
    "Create a key",
    [
      { key: "user", label: "User", hint: "A new name makes the user", input: el("input", { autocomplete: "off" }), parse: (t) => t, required: true, api: ["user"] },
      { key: "name", label: "Key name", input: el("input", { autocomplete: "off" }), parse: (t) => t, required: true, api: ["name"] },
      ...fresh.specs,
    ],
    fresh.groups,
    (body) => api("POST", `${PATHS.admin}/keys`, body),
    { saveLabel: "Create", done: created, cancel: false, more: "Limits, models, expiry and budget" },
  );
  view.append(
    el("h1", {}, "Keys"),
    form,
    secretBox,
    el(
      "div",
      { class: "row" },
      el("div", {}, el("label", { for: "key-search" }, "Search"), search),
      el("div", {}, el("label", { for: "key-status" }, "Status"), statusFilter),
      el("div", {}, el("label", { for: "key-role" }, "Role"), roleFilter),
    ),
    listing,
  );
  showList();
}

function budgetText(b, none = "none") {
  return b ? `${money(b.amount)} ${b.period}${b.alert_percent ? `, alert at ${b.alert_percent}%` : ""}` : none;
}

function useText(u) {
  if (!u) return "";
  const l = u.limits || {};
  const parts = [`${u.requests_this_minute}/${l.rpm || "∞"} a minute`];
  if (l.rph) parts.push(`${u.requests_this_hour}/${l.rph} an hour`);
  if (l.tokens_per_day) parts.push(`${number(u.tokens_today)}/${number(l.tokens_per_day)} tokens today`);
  if (l.max_concurrent) parts.push(`${u.in_flight}/${l.max_concurrent} at once`);
  return parts.join(", ");
}

// --- change forms ----------------------------------------------------------------------
// A form shows each value as it is; Save sends only what the person changed (a budget's
// amount, period and alert go together, as the API takes a budget whole). Each field has
// its label in people's words, a hint, and its own error line right under it.

function field(id, label, input, hint) {
  input.id = id;
  const hintLine = hint ? el("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  const error = el("p", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  input.setAttribute("aria-describedby", hintLine ? `${id}-hint ${id}-error` : `${id}-error`);
  const box = el("div", { class: "field" }, el("label", { for: id }, label), input, hintLine, error);
  return {
    box,
    input,
    fail(message) {
      input.closest("details")?.setAttribute("open", "");
      error.textContent = message;
      input.setAttribute("aria-invalid", "true");
    },
    clear() {
      error.textContent = "";
      input.removeAttribute("aria-invalid");
    },
  };
}

// specs: [{ key, label, hint, input, parse(text) -> value, api: [words naming it in the
// API's errors; verbatim: shown as the API says it), group, required, more (folded under
// "More")}]; groups: { name: { legend,
// build(values) -> value } }. A form that creates starts empty: what is filled in is sent.
function changeForm(id, title, specs, groups, send, options = {}) {
  const { saveLabel = "Save", done = () => route(), cancel: cancellable = true, more = "More" } = options;
  const fields = specs.map((spec) => {
    const f = field(`${id}-${spec.key}`, spec.label, spec.input, spec.hint);
    return { ...spec, ...f, initial: spec.input.value };
  });
  const formError = el("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  const save = el("button", { type: "submit" }, saveLabel);
  const cancel = cancellable ? el("button", { type: "button", class: "quiet" }, "Cancel") : null;
  const first = el("div", { class: "row fields" });
  const rest = el("div", { class: "row fields" });
  const sets = {};
  for (const f of fields) {
    if (f.group) (sets[f.group] ||= el("div", { class: "row fields" })).append(f.box);
    else (f.more ? rest : first).append(f.box);
  }
  const groupSets = Object.entries(sets).map(([name, row]) => el("fieldset", {}, el("legend", {}, groups[name].legend), row));
  const folded = fields.some((f) => f.more);
  const layout = folded
    ? [first, el("details", {}, el("summary", {}, more), rest, ...groupSets)]
    : [first, ...groupSets];
  const form = el(
    "form",
    { class: "card", id, novalidate: true },
    el("h2", {}, title),
    ...layout,
    el("div", { class: "row" }, save, cancel),
    formError,
  );
  if (cancel) {
    cancel.addEventListener("click", () => {
      // (back to the button that opened it, for a keyboard)
      const below = form.closest("tr.below");
      below?.previousElementSibling?.querySelector("[data-action=edit]")?.focus();
      below?.remove();
    });
  }
  const place = (message) => {
    // An error the API names a field in goes under that field, in the field's words.
    // (the longest name first: "a budget's alert" before "a budget")
    const names = fields.flatMap((f) => (f.api || []).map((word) => [word, f])).sort((a, b) => b[0].length - a[0].length);
    for (const [word, f] of names) {
      if (new RegExp(`(^|\\W)${word.replace(/[^\w ]/g, "\\$&")}(\\W|$)`).test(message)) {
        f.fail(f.verbatim ? message : message.replace(word, f.label));
        f.input.focus();
        return;
      }
    }
    formError.textContent = message;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.forEach((f) => f.clear());
    formError.textContent = "";
    const missing = fields.filter((f) => f.required && !f.input.value.trim());
    missing.forEach((f) => f.fail(`${f.label}: required.`));
    if (missing.length) {
      missing[0].input.focus();
      return;
    }
    const changed = fields.filter((f) => f.input.value !== f.initial);
    if (!changed.length) {
      formError.textContent = "Nothing changed.";
      return;
    }
    const body = {};
    const failed = [];
    const values = {};
    for (const f of fields) {
      if (f.input.value === f.initial && !(f.group && changed.some((c) => c.group === f.group))) continue;
      try {
        values[f.key] = f.parse(f.input.value.trim());
        if (!f.group) body[f.key] = values[f.key];
      } catch (err) {
        f.fail(err.message);
        failed.push(f);
      }
    }
    if (failed.length) {
      failed[0].input.focus();
      return;
    }
    for (const [name, group] of Object.entries(groups)) {
      if (changed.some((c) => c.group === name)) body[name] = group.build(values);
    }
    save.disabled = true;
    try {
      done(await send(body), form);
    } catch (err) {
      place(err.message);
    } finally {
      save.disabled = false;
    }
  });
  return form;
}

function wholeNumber(what, empty) {
  return (text) => {
    if (text === "") return empty;
    if (!/^\d{1,15}$/.test(text)) throw new Error(`${what}: a whole number, 0 or more.`);
    if (Number(text) > 1e12) throw new Error(`${what}: at most 1,000,000,000,000.`);
    return Number(text);
  };
}

// An ISO time from the API ("2099-01-31T13:45:00Z") as a datetime-local value, in UTC,
// to the minute (left as it is, it is not sent, so its seconds stay).
function utcInputValue(iso) {
  return iso ? iso.slice(0, 16) : "";
}

function utcText(iso) {
  return iso ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}` : "";
}

function budgetFields(prefix, budget) {
  const periods = ["total", "daily", "weekly", "monthly"];
  return {
    specs: [
      {
        key: `${prefix}amount`,
        group: "budget",
        label: `Amount (${PATHS.currency})`,
        hint: "Empty: no budget",
        input: el("input", { inputmode: "decimal", value: budget ? money(budget.amount) : "" }),
        parse: (text) => (text === "" ? null : toMicro(text)),
        api: ["a budget"],
      },
      {
        key: `${prefix}period`,
        group: "budget",
        label: "Period",
        input: el("select", {}, periods.map((p) => el("option", { value: p, selected: budget ? budget.period === p : p === "monthly" }, p))),
        parse: (text) => text,
        api: ["a budget's period"],
      },
      {
        key: `${prefix}alert`,
        group: "budget",
        label: "Alert at (% spent)",
        hint: "Empty: no alert",
        input: el("input", { inputmode: "numeric", value: budget && budget.alert_percent ? budget.alert_percent : "" }),
        parse: (text) => {
          if (text === "") return null;
          if (!/^\d{1,3}$/.test(text) || Number(text) < 1 || Number(text) > 100) throw new Error("A whole percentage from 1 to 100.");
          return Number(text);
        },
        api: ["a budget's alert"],
      },
    ],
    group: {
      legend: "Budget",
      build: (v) => {
        const amount = v[`${prefix}amount`];
        if (amount === null) return null;
        const made = { amount, period: v[`${prefix}period`] };
        if (v[`${prefix}alert`] !== null) made.alert_percent = v[`${prefix}alert`];
        return made;
      },
    },
  };
}

const LIMITS = [
  ["rpm", "Requests per minute"],
  ["rph", "Requests per hour"],
  ["tokens_per_day", "Tokens per day"],
  ["max_concurrent", "Requests at once"],
];

// The fields of a key, as they are (`key`), or empty for a new one (`more`: folded).
function keySpecs(key, more = false) {
  const budget = budgetFields("budget_", key.budget);
  const specs = [
    {
      key: "role",
      label: "Role",
      input: el("select", {}, ["user", "admin"].map((r) => el("option", { value: r, selected: r === (key.role || "user") }, r))),
      parse: (text) => text,
    },
    ...LIMITS.map(([name, label]) => ({
      key: name,
      label,
      hint: "Empty: the gateway's default; 0: no limit",
      input: el("input", { inputmode: "numeric", value: key[name] ?? "" }),
      parse: wholeNumber(label, null),
      api: [name],
      more: more && name !== "rpm",
    })),
    {
      key: "models",
      label: "Models it may use",
      hint: "Names or patterns such as llama3*, separated by commas; empty: all",
      input: el("input", { value: key.models ? key.models.join(", ") : "" }),
      parse: (text) => {
        const patterns = text.split(",").map((p) => p.trim()).filter(Boolean);
        return patterns.length ? patterns : null;
      },
      api: ["models", "model name or pattern", "model patterns"],
      verbatim: true, // (its messages read well as they are)
      more,
    },
    {
      key: "expires_at",
      label: "Expires (UTC)",
      hint: "Date and time in UTC; empty: never",
      input: el("input", { type: "datetime-local", step: "60", value: utcInputValue(key.expires) }),
      parse: (text) => {
        if (text === "") return null;
        const when = Date.parse(`${text}Z`) / 1000;
        if (Number.isNaN(when)) throw new Error("A date and time, such as 2030-01-31 13:45.");
        if (when <= Date.now() / 1000) throw new Error("A time in the future (UTC).");
        return when;
      },
      api: ["expires_at"],
      more,
    },
    ...budget.specs,
  ];
  return { specs, groups: { budget: budget.group } };
}

function editKey(key, tr) {
  const { specs, groups } = keySpecs(key);
  const form = changeForm("edit-key", ["Change ", named(`${key.user}/${key.key_name}`)], specs, groups, (body) =>
    api("PATCH", `${PATHS.admin}/keys/${key.id}`, body),
  );
  openBelow(tr, form);
  form.querySelector("select, input").focus();
}

function keyActions(key) {
  const edit = el("button", { type: "button", class: "quiet", "data-action": "edit", "aria-label": `Change ${key.user}/${key.key_name}` }, "Change");
  edit.addEventListener("click", () => editKey(key, edit.closest("tr")));
  const revoke = el("button", { type: "button", class: "danger", "data-action": "revoke", "aria-label": `Revoke ${key.user}/${key.key_name}` }, "Revoke");
  revoke.addEventListener("click", async () => {
    if (!window.confirm(`Revoke ${key.user}/${key.key_name}? It stops working at once.`)) return;
    try {
      await api("DELETE", `${PATHS.admin}/keys/${key.id}`);
      route();
    } catch (err) {
      openBelow(revoke.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
    }
  });
  const details = el("button", { type: "button", class: "quiet", "data-action": "details", "aria-label": `Details of ${key.user}/${key.key_name}` }, "Details");
  details.addEventListener("click", async () => {
    try {
      const doc = await api("GET", `${PATHS.admin}/keys/${key.id}`);
      openBelow(
        details.closest("tr"),
        el(
          "div",
          { class: "card", id: "key-details" },
          el("p", {}, named(`${doc.user}/${doc.key_name}`), ` — last used ${utcText(doc.last_used) || "never"} (UTC)`),
          ...refusedBrief(doc.refused, "last 7 days"),
        ),
      );
    } catch (err) {
      openBelow(details.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
    }
  });
  return el("div", { class: "actions" }, edit, details, revoke);
}

const FILTERS = [
  ["user", "User", "text", true],
  ["model", "Model", "text", false],
  ["route", "Route", "text", false, "/api/chat"], // (also /v1/chat/completions, or /chat as recorded)
  ["status", "Status", "number", false],
  ["since", "From (UTC date)", "date", false],
  ["until", "Until (UTC date, exclusive)", "date", false],
];

async function usageView(view) {
  const isAdmin = state.me.key.role === "admin";
  const form = el("form", { class: "card", id: "usage-filters" }, el("h2", {}, "Filter"));
  const fields = el("div", { class: "row" });
  for (const [name, title, type, adminOnly, example] of FILTERS) {
    if (adminOnly && !isAdmin) continue;
    fields.append(el("div", {}, el("label", { for: `f-${name}` }, title), el("input", { id: `f-${name}`, name, type, placeholder: example })));
  }
  fields.append(el("button", { type: "submit" }, "Show"));
  form.append(fields);
  const results = el("div", { id: "usage-results" });
  const breakdown = el("div", { id: "usage-breakdown" });
  let offset = 0;
  const query = () => {
    const params = new URLSearchParams();
    for (const [name, , type] of FILTERS) {
      const input = form.querySelector(`#f-${name}`);
      if (!input || !input.value.trim()) continue;
      params.set(name, type === "date" ? String(Date.parse(`${input.value}T00:00:00Z`) / 1000) : input.value.trim());
    }
    return params;
  };
  const load = async () => {
    const params = query();
    params.set("limit", "50");
    params.set("offset", String(offset));
    const page = await api("GET", `${PATHS.admin}/usage?${params}`);
    const exports = query();
    const links = ["csv", "json"].map((fmt) => {
      exports.set("format", fmt);
      return el("a", { class: "button", href: `${PATHS.admin}/usage?${exports}`, download: `usage.${fmt}` }, `Export ${fmt.toUpperCase()}`);
    });
    const prev = el("button", { type: "button", class: "quiet", disabled: offset === 0 }, "Newer");
    prev.addEventListener("click", () => { offset = Math.max(0, offset - 50); load(); });
    const next = el("button", { type: "button", class: "quiet", disabled: !page.more }, "Older");
    next.addEventListener("click", () => { offset += 50; load(); });
    results.replaceChildren(
      el("div", { class: "row" }, ...links),
      table(
        [
          { title: "Time (UTC)", keep: true, cell: (r) => `${r.time.slice(0, 10)} ${r.time.slice(11, 19)}` },
          { title: "User / key", cell: (r) => stacked(r.user, r.key_name) },
          { title: "Route", cell: (r) => r.route },
          { title: "Model", cell: (r) => r.model ?? "" },
          { title: "Status", num: true, cell: (r) => r.status },
          { title: "Tokens in / out", num: true, cell: (r) => `${r.prompt_tokens ?? "-"} / ${r.completion_tokens ?? "-"}` },
          { title: "ms", num: true, cell: (r) => r.duration_ms },
          { title: `Cost (${PATHS.currency})`, num: true, cell: (r) => money(r.cost) },
        ],
        page.records,
        "No request matches.",
      ),
      el("div", { class: "row" }, prev, next, el("span", { class: "muted" }, `from ${offset + 1}`)),
      el("div", { id: "usage-refused" }, ...refusedBrief(page.refused, "for this filter")),
    );
    if (isAdmin) {
      const period = new URLSearchParams();
      for (const name of ["since", "until"]) if (params.get(name)) period.set(name, params.get(name));
      // Without a start, the breakdowns cover the last 7 days (never the whole history).
      const span = period.get("since") ? "in the period" : "in the last 7 days";
      if (!period.get("since")) period.set("since", String(Math.floor(Date.now() / 1000) - 7 * 86400));
      period.set("parts", "per_user,per_model");
      const stats = await api("GET", `${PATHS.admin}/stats?${period}`);
      const columns = (label, key) => [
        { title: label, cell: (r) => r[key] ?? "(none)" },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "Tokens", num: true, cell: (r) => number(r.total_tokens) },
        { title: `Cost (${PATHS.currency})`, num: true, cell: (r) => money(r.cost) },
        { title: "Errors", num: true, cell: (r) => number(r.errors) },
      ];
      breakdown.replaceChildren(
        el("h2", {}, `Per user, ${span}`),
        table(columns("User", "user"), stats.per_user, "No usage in this period."),
        el("h2", {}, `Per model, ${span}`),
        table(columns("Model", "model"), stats.per_model, "No usage in this period."),
      );
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    load().catch((err) => results.replaceChildren(el("p", { class: "error", role: "alert" }, err.message)));
  });
  view.append(el("h1", {}, "Usage"), form, results, breakdown);
  await load();
}

async function modelsView(view) {
  const isAdmin = state.me.key.role === "admin";
  const doc = await api("GET", `${PATHS.admin}/models`);
  const priceCell = (m) => {
    const p = m.price;
    const text = priceText(p);
    if (!isAdmin) return el("span", {}, text);
    const edit = el("button", { type: "button", class: "quiet", "data-action": "price", "aria-label": `Set the price of ${m.name}` }, "Set price");
    edit.addEventListener("click", () => priceForm(m, edit.closest("tr")));
    // (the pattern that priced it, cut like any name when long)
    return el("div", {}, el("span", { class: "wrap" }, text), p ? stacked(`by ${p.pattern}`) : null, edit);
  };
  view.append(
    el("h1", {}, "Models"),
    el("p", { class: "muted" }, `Prices in ${doc.currency}. A model no price matches is free.`),
    table(
      [
        { title: "Model", wide: true, cell: (m) => m.name },
        { title: "Family", cell: (m) => m.family ?? "" },
        { title: "Parameters", cell: (m) => m.parameter_size ?? "" },
        { title: "Quantisation", cell: (m) => m.quantization_level ?? "" },
        { title: "Context", num: true, cell: (m) => (m.context_length ? number(m.context_length) : "") },
        { title: "Size GB", num: true, cell: (m) => (m.size ? (m.size / 1e9).toFixed(2) : "") },
        { title: `Price (${doc.currency})`, cell: priceCell },
      ],
      doc.models,
      "Ollama has no model this key may use: pull one (ollama pull llama3.2).",
    ),
  );
  if (isAdmin) view.append(...(await pricesSection()));
}

// A price's parts that cost something ("0.400000 /M out"); a price of nothing is "free".
function priceText(p) {
  const parts = p
    ? [
        [p.per_request, "a request"],
        [p.per_million_input, "M in"],
        [p.per_million_output, "M out"],
        [p.per_second, "second"],
      ].filter(([amount]) => amount).map(([amount, unit]) => `${money(amount)} /${unit}`)
    : [];
  return parts.length ? parts.join(", ") : "free";
}

// Every price pattern (* prices what no other pattern matches), each removable after an
// inline "Remove? Yes / No" beside it.
async function pricesSection() {
  const doc = await api("GET", `${PATHS.admin}/prices`);
  const removeButton = (p) => {
    const box = el("div", { class: "actions" });
    const ask = el("button", { type: "button", class: "danger", "data-action": "remove-price", "aria-label": `Remove the price ${p.pattern}` }, "Remove");
    const ready = () => box.replaceChildren(ask);
    ask.addEventListener("click", () => {
      const yes = el("button", { type: "button", class: "danger", "data-action": "confirm", "aria-label": `Yes, remove the price ${p.pattern}` }, "Yes");
      const no = el("button", { type: "button", class: "quiet", "data-action": "cancel", "aria-label": "No, keep it" }, "No");
      no.addEventListener("click", () => {
        ready();
        ask.focus();
      });
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          await api("DELETE", `${PATHS.admin}/prices?pattern=${encodeURIComponent(p.pattern)}`);
          route();
        } catch (err) {
          openBelow(box.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
          ready();
        }
      });
      box.replaceChildren(el("span", { class: "keep" }, "Remove?"), yes, no);
      no.focus();
    });
    ready();
    return box;
  };
  return [
    el("h2", { id: "prices" }, `Prices (${doc.currency})`),
    table(
      [
        { title: "Pattern", cell: (p) => p.pattern },
        { title: "Price", wrap: true, cell: (p) => priceText(p) },
        { title: "Actions", act: true, cell: removeButton },
      ],
      doc.prices,
      "No prices: every model is free.",
    ),
  ];
}

function priceForm(model, tr) {
  const p = model.price || {};
  const parts = [
    ["per_request", "Per request"],
    ["per_million_input", "Per million input tokens"],
    ["per_million_output", "Per million output tokens"],
    ["per_second", "Per second of model time"],
  ];
  const pattern = field("price-pattern", "Model or pattern", el("input", { value: p.pattern || model.name }), "Such as llama3*; * prices every model no other pattern matches");
  const amounts = parts.map(([name, title]) =>
    field(`price-${name}`, `${title} (${PATHS.currency})`, el("input", { inputmode: "decimal", value: money(p[name] || 0) })),
  );
  const formError = el("p", { class: "field-error", role: "alert" });
  const form = el(
    "form",
    { class: "card", id: "price-form", novalidate: true },
    el("h2", {}, "Price of ", named(model.name)),
    el("div", { class: "row fields" }, pattern.box),
    el("div", { class: "row fields" }, amounts.map((f) => f.box)),
    el("div", { class: "row" }, el("button", { type: "submit" }, "Save")),
    formError,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    [pattern, ...amounts].forEach((f) => f.clear());
    formError.textContent = "";
    const body = { pattern: pattern.input.value.trim() };
    let ok = true;
    parts.forEach(([name], i) => {
      try {
        body[name] = toMicro(amounts[i].input.value);
      } catch (err) {
        amounts[i].fail(err.message);
        ok = false;
      }
    });
    if (!ok) return;
    try {
      await api("POST", `${PATHS.admin}/prices`, body);
      route();
    } catch (err) {
      const i = parts.findIndex(([name]) => err.message.includes(name));
      if (i >= 0) amounts[i].fail(err.message.replace(parts[i][0], parts[i][1]));
      else if (/pattern/.test(err.message)) pattern.fail(err.message);
      else formError.textContent = err.message;
    }
  });
  openBelow(tr, form);
  pattern.input.focus();
}

// An amount typed as 0.15 -> 150000 micro-units, exactly (no floating point).
function toMicro(text) {
  const match = /^\s*(\d{1,9})(?:\.(\d{0,6}))?\s*$/.exec(text);
  if (!match) throw new Error(`An amount such as 12.50 (at most six decimals), not "${text.trim()}".`);
  return Number(match[1]) * 1e6 + Number((match[2] || "").padEnd(6, "0"));
}

async function usersView(view) {
  const doc = await api("GET", `${PATHS.admin}/users`);
  const search = el("input", { id: "user-search", type: "search", placeholder: "name or email" });
  const status = el("select", { id: "user-status" }, ["all", "active", "disabled"].map((v) => el("option", { value: v }, v)));
  const listing = el("div", {});
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const rows = doc.users.filter(
      (u) =>
        (status.value === "all" || u.status === status.value) &&
        (!q || u.user.toLowerCase().includes(q) || (u.email || "").toLowerCase().includes(q)),
    );
    listing.replaceChildren(
      table(
        [
          { title: "User", cell: (u) => u.user },
          { title: "Email", cell: (u) => u.email ?? "" },
          { title: "Status", cell: (u) => u.status },
          { title: "Active keys", num: true, cell: (u) => u.active_keys },
          { title: `Budget (${PATHS.currency})`, wrap: true, cell: (u) => budgetText(u.budget) },
          { title: "Actions", act: true, cell: (u) => userActions(u) },
        ],
        rows,
        doc.users.length ? "No user matches." : "No users yet: creating a key makes its user.",
      ),
    );
  };
  search.addEventListener("input", show);
  status.addEventListener("change", show);
  view.append(
    el("h1", {}, "Users"),
    el("div", { class: "row" }, el("div", {}, el("label", { for: "user-search" }, "Search"), search), el("div", {}, el("label", { for: "user-status" }, "Status"), status)),
    listing,
  );
  show();
}

function editUser(user, tr) {
  const budget = budgetFields("budget_", user.budget);
  const specs = [
    {
      key: "email",
      label: "Email",
      hint: "Empty: none",
      input: el("input", { type: "email", value: user.email ?? "" }),
      parse: (text) => text || null,
      api: ["email"],
    },
    {
      key: "note",
      label: "Note",
      input: el("input", { value: user.note ?? "" }),
      parse: (text) => text || null,
      api: ["note"],
    },
    ...budget.specs,
  ];
  const form = changeForm("edit-user", ["Change ", named(user.user)], specs, { budget: budget.group }, (body) =>
    api("PATCH", `${PATHS.admin}/users/${encodeURIComponent(user.user)}`, body),
  );
  openBelow(tr, form);
  form.querySelector("input").focus();
}

function userActions(user) {
  const edit = el("button", { type: "button", class: "quiet", "data-action": "edit", "aria-label": `Change ${user.user}` }, "Change");
  edit.addEventListener("click", () => editUser(user, edit.closest("tr")));
  const failed = (button, err) => openBelow(button.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
  const check = el("button", { type: "button", class: "quiet", "data-action": "spend", "aria-label": `Spend of ${user.user}` }, "Spend");
  check.addEventListener("click", async () => {
    try {
      const name = encodeURIComponent(user.user);
      const [r, doc] = await Promise.all([
        api("GET", `${PATHS.admin}/users/${name}/budget`),
        api("GET", `${PATHS.admin}/users/${name}`),
      ]);
      const head = r.budget
        ? `${r.user}: spent ${money(r.budget.spent)} of ${money(r.budget.amount)} ${r.currency} (${r.budget.period}); ${money(r.budget.remaining)} left; resets ${r.budget.resets_at || "never"}`
        : `${r.user}: no budget; spent ${money(r.spent)} ${r.currency} this month`;
      openBelow(
        check.closest("tr"),
        el(
          "div",
          { class: "card", id: "budget-report" },
          el("p", {}, head),
          table(
            [
              { title: "Key", cell: (k) => k.key_name },
              { title: "Spent", num: true, cell: (k) => money(k.spent) },
              { title: "Own budget", cell: (k) => (k.budget ? `${money(k.budget.spent)} of ${money(k.budget.amount)} ${k.budget.period}` : "none") },
            ],
            r.keys,
            "No active keys.",
          ),
          ...refusedBrief(doc.refused, "last 7 days"),
        ),
      );
    } catch (err) {
      failed(check, err);
    }
  });
  const toggle = el("button", { type: "button", class: user.status === "active" ? "danger" : "quiet", "data-action": "toggle" }, user.status === "active" ? "Disable" : "Enable");
  toggle.addEventListener("click", async () => {
    const disable = user.status === "active";
    if (disable && !window.confirm(`Disable ${user.user}? All its keys stop working at once.`)) return;
    try {
      await api("PATCH", `${PATHS.admin}/users/${encodeURIComponent(user.user)}`, { disabled: disable });
      route();
    } catch (err) {
      failed(toggle, err);
    }
  });
  return el("div", { class: "actions" }, edit, check, toggle);
}

async function myUsage(view) {
  const [me, day] = await Promise.all([
    api("GET", `${PATHS.admin}/me`),
    api("GET", `${PATHS.admin}/series?hours=24`),
  ]);
  const limits = me.current.limits || {};
  view.append(
    el("h1", {}, named(`${me.key.user} / ${me.key.key_name}`)),
    el("p", { class: "muted" }, `Role ${me.key.role}; key ${me.key.prefix}…; status ${me.key.status}`),
    el("h2", {}, "Limits and what is left"),
    el(
      "div",
      { class: "grid" },
      stat("Requests this minute", `${me.current.requests_this_minute} of ${limits.rpm || "∞"}`),
      stat("Requests this hour", `${me.current.requests_this_hour} of ${limits.rph || "∞"}`),
      stat("Tokens today", `${number(me.current.tokens_today)} of ${limits.tokens_per_day ? number(limits.tokens_per_day) : "∞"}`),
      stat("At once", `${me.current.in_flight} of ${limits.max_concurrent || "∞"}`),
    ),
    el("h2", {}, "Budgets"),
    me.budgets.length
      ? table(
          [
            { title: "Budget of", cell: (b) => b.owner },
            { title: "Period", cell: (b) => b.period },
            { title: `Amount (${me.currency})`, num: true, cell: (b) => money(b.amount) },
            { title: "Spent", num: true, cell: (b) => money(b.spent) },
            { title: "Remaining", num: true, cell: (b) => money(b.remaining) },
            { title: "Resets (UTC)", cell: (b) => (b.resets_at ? utcText(new Date(b.resets_at * 1000).toISOString()) : "never") },
          ],
          me.budgets,
          "",
        )
      : el("p", { class: "empty" }, "No budget: spending is not capped."),
    ...usageStats("Last 24 hours", me.usage.last_24h),
    charts(day.series, 24, "last 24 hours"),
    ...usageStats("Last 7 days", me.usage.last_7d),
  );
}

async function playground(view) {
  const models = await api("GET", `${PATHS.admin}/models`);
  if (!models.models.length) {
    view.append(el("h1", {}, "Playground"), el("p", { class: "empty" }, "This key may use no model that Ollama has."));
    return;
  }
  const pick = el("select", { id: "pg-model" }, models.models.map((m) => el("option", { value: m.name }, m.name)));
  const system = el("textarea", { id: "pg-system", placeholder: "optional" });
  const prompt = el("textarea", { id: "pg-prompt", required: true });
  const send = el("button", { type: "submit", id: "pg-send" }, "Send");
  const stop = el("button", { type: "button", class: "danger", id: "pg-stop", disabled: true }, "Stop");
  const answer = el("div", { class: "answer card", id: "pg-answer", "aria-live": "polite" });
  const figures = el("p", { class: "muted", id: "pg-figures" });
  const error = el("p", { class: "error", role: "alert" });
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  const form = el(
    "form",
    { class: "card" },
    el("label", { for: "pg-model" }, "Model"),
    pick,
    el("label", { for: "pg-system" }, "System prompt"),
    system,
    el("label", { for: "pg-prompt" }, "Prompt"),
    prompt,
    el("div", { class: "row" }, send, stop),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    answer.textContent = "";
    figures.textContent = "";
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    const model = models.models.find((m) => m.name === pick.value);
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let firstToken = null;
    let final = null;
    let tokens = 0;
    try {
      const resp = await fetch(`${PATHS.api}/chat`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Requested-With": "aigateway" },
        body: JSON.stringify({ model: pick.value, messages, stream: true }),
        signal: controller.signal,
      });
      if (!resp.ok) {
        let doc = null;
        try {
          doc = await resp.json();
        } catch (_) {
          doc = null;
        }
        throw new Error(errorText(doc) || `HTTP ${resp.status}`);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (!line) continue;
          const part = JSON.parse(line);
          if (part.error) throw new Error(part.error);
          const text = part.message && part.message.content;
          if (text) {
            if (firstToken === null) firstToken = performance.now();
            tokens += 1;
            answer.append(document.createTextNode(text));
          }
          if (part.done) final = part;
        }
      }
    } catch (err) {
      if (err.name === "AbortError") error.textContent = "Stopped.";
      else error.textContent = err.message;
    } finally {
      send.disabled = false;
      stop.disabled = true;
      controller = null;
    }
    const seconds = (performance.now() - started) / 1000;
    const output = final ? final.eval_count : tokens;
    const perSecond = final && final.eval_duration ? output / (final.eval_duration / 1e9) : output / seconds;
    const parts = [
      `${output} output tokens`,
      `${perSecond.toFixed(1)} tokens/s`,
      firstToken === null ? "no token" : `first token after ${((firstToken - started) / 1000).toFixed(2)} s`,
    ];
    if (final && model && model.price) {
      const p = model.price;
      const exact = (final.prompt_eval_count || 0) * p.per_million_input * 1000 + output * p.per_million_output * 1000 + (final.total_duration || 0) * p.per_second;
      // As the gateway charges it: nano-units rounded up, shown in micro-units half up.
      const nano = p.per_request * 1000 + Math.ceil(exact / 1e6);
      parts.push(`cost ${money(Math.floor((nano + 500) / 1000))} ${models.currency}`);
    }
    figures.textContent = parts.join(" · ");
  });
  view.append(el("h1", {}, "Playground"), form, error, answer, figures);
}

// --- shell: sign-in, navigation, theme --------------------------------------------------

function showSignIn(message, failed = true) {
  state.me = null;
  for (const id of ["nav", "signout", "who", "menu"]) document.getElementById(id).hidden = true;
  document.getElementById("view").replaceChildren();
  document.getElementById("signin").hidden = false;
  const line = document.getElementById("signin-error");
  line.textContent = message || "";
  line.className = failed ? "error" : "muted"; // (signing out is no error)
  document.getElementById("signin-key").focus();
}

async function start(signingIn = false) {
  try {
    state.me = await api("GET", `${PATHS.admin}/me`);
  } catch (err) {
    if (err.status === 401) return showSignIn("");
    return showSignIn(err.message);
  }
  const asked = VIEWS[location.hash.replace(/^#\//, "")];
  if (signingIn && asked && asked.admin && state.me.key.role !== "admin") {
    // (an admin's page in the address, a link or a bookmark: a user starts on its own)
    history.replaceState(null, "", `#/${startPage()}`);
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("signout").hidden = false;
  const who = document.getElementById("who");
  const { user, key_name: keyName, role } = state.me.key;
  who.textContent = `${user} / ${keyName} (${role})`;
  who.title = `Signed in as ${user}, key ${keyName}, role ${role}`;
  who.hidden = false;
  document.getElementById("menu").hidden = false;
  const nav = document.getElementById("nav");
  const isAdmin = state.me.key.role === "admin";
  nav.replaceChildren(
    el("span", { class: "nav-who" }, who.textContent),
    ...Object.entries(VIEWS)
      .filter(([, v]) => isAdmin || !v.admin)
      .map(([name, v]) => el("a", { href: `#/${name}`, "data-view": name }, v.title)),
  );
  nav.hidden = false;
  route();
}

// Each role's own start page: where it lands on signing in, and from a page not its own.
function startPage() {
  return state.me.key.role === "admin" ? "overview" : "me";
}

async function route() {
  if (!state.me) return;
  const name = location.hash.replace(/^#\//, "") || startPage();
  const view = document.getElementById("view");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const chosen = VIEWS[name];
  const fresh = el("div", { id: `view-${name}`, "aria-busy": "true" });
  view.replaceChildren(fresh);
  showMenu(false);
  if (!chosen) {
    fresh.append(el("p", { class: "error" }, "No such page."));
    fresh.setAttribute("aria-busy", "false");
    return;
  }
  try {
    await chosen.render(fresh);
  } catch (err) {
    if (err.status === 401) return showSignIn(err.message);
    fresh.replaceChildren(el("h1", {}, chosen.title), el("p", { class: "error", role: "alert" }, err.message));
  }
  fresh.setAttribute("aria-busy", "false");
}

// On a phone the pages are behind the Menu button (the header stays one line).
function showMenu(open) {
  document.getElementById("nav").classList.toggle("open", open);
  document.getElementById("menu").setAttribute("aria-expanded", String(open));
}

function applyTheme(theme) {
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
}

document.addEventListener("DOMContentLoaded", () => {
  // Only the theme is remembered in the browser; never a key.
  applyTheme(localStorage.getItem("aigateway-theme"));
  document.getElementById("theme").addEventListener("click", () => {
    const dark = root.dataset.theme
      ? root.dataset.theme === "dark"
      : window.matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    localStorage.setItem("aigateway-theme", next);
    applyTheme(next);
  });
  document.getElementById("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("signin-key");
    try {
      await api("POST", `${PATHS.ui}/session`, { key: input.value });
      input.value = "";
      await start(true);
    } catch (err) {
      input.value = "";
      document.getElementById("signin-error").textContent = err.message;
    }
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await api("DELETE", `${PATHS.ui}/session`);
    } finally {
      // The next person to sign in starts on their role's start page, not this one's last.
      history.replaceState(null, "", location.pathname + location.search);
      showSignIn("Signed out.", false);
    }
  });
  document.getElementById("menu").addEventListener("click", () => {
    showMenu(document.getElementById("menu").getAttribute("aria-expanded") !== "true");
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") showMenu(false);
  });
  // Which values are cut changes with the page's width (a window resized, a scroll bar
  // come) and with what is shown: measured again when the view's size changes.
  // (A ResizeObserver's callback runs after layout, when the widths are known.)
  const view = document.getElementById("view");
  new ResizeObserver(() => markCut(view)).observe(view);
  window.addEventListener("hashchange", route);
  start();
});
