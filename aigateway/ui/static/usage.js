// The Usage page: records by filter, exports, refusals and breakdowns.
import { PATHS, api, el, money, number, stacked, state, table } from "./core.js";
import { refusedBrief } from "./refusals.js";

export const FILTERS = [
  ["user", "User", "text", true],
  ["key_id", "Key id", "number", true],
  ["model", "Model", "text", false],
  ["route", "Route", "text", false, "/api/chat"], // (also /v1/chat/completions, or /chat as recorded)
  ["status", "Status", "number", false],
  ["cached", "Response cache", "select", false, [["", "Any"], ["true", "Cached only"], ["false", "Not cached"]]],
  ["since", "From (UTC date)", "date", false],
  ["until", "Until (UTC date, exclusive)", "date", false],
];

export async function usageView(view) {
  const isAdmin = state.me.key.role === "admin";
  const form = el("form", { class: "card", id: "usage-filters" }, el("h2", {}, "Filter"));
  const fields = el("div", { class: "row" });
  for (const [name, title, type, adminOnly, example] of FILTERS) {
    if (adminOnly && !isAdmin) continue;
    const control =
      type === "select"
        ? el("select", { id: `f-${name}`, name }, example.map(([value, text]) => el("option", { value }, text)))
        : el("input", { id: `f-${name}`, name, type, placeholder: example });
    fields.append(el("div", {}, el("label", { for: `f-${name}` }, title), control));
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
          { title: "Status", num: true, cell: (r) => (r.cached ? el("span", {}, `${r.status} `, el("span", { class: "tag" }, "cached")) : r.status) },
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
      // The breakdowns answer the records' own filter (the same query, one reading of it).
      const filtered = query();
      filtered.set("parts", "per_user,per_model");
      filtered.set("percentiles", "false"); // (not shown here; most of a long period's cost)
      const stats = await api("GET", `${PATHS.admin}/stats?${filtered}`);
      const columns = (label, key) => [
        { title: label, cell: (r) => r[key] ?? "(none)" },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "Tokens", num: true, cell: (r) => number(r.total_tokens) },
        { title: `Cost (${PATHS.currency})`, num: true, cell: (r) => money(r.cost) },
        { title: "Errors", num: true, cell: (r) => number(r.errors) },
      ];
      breakdown.replaceChildren(
        el("h2", {}, "Per user, for this filter"),
        table(columns("User", "user"), stats.per_user, "No request matches."),
        el("h2", {}, "Per model, for this filter"),
        table(columns("Model", "model"), stats.per_model, "No request matches."),
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
