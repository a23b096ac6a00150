// The Overview (admins): upstreams, the last day and week, charts over 24 hours to 30
// days, top users and models, refusals.
import { cacheStats } from "./cache.js";
import { usageCharts } from "./charts.js";
import { PATHS, api, el, money, number, stat, table, usageStats } from "./core.js";
import { refusedTables } from "./refusals.js";

export async function overview(view) {
  // Top users and models of the last 7 days: the page never reads the whole history.
  const weekAgo = Math.floor(Date.now() / 1000) - 7 * 86400;
  // Each upstream's state and loaded models come from the gateway's own last look
  // (/admin/upstreams), never a relayed call: that would be recorded as the admin's
  // usage, and reach the upstream on every refresh.
  const [stats, pool, charts, cache] = await Promise.all([
    api("GET", `${PATHS.admin}/stats?since=${weekAgo}&parts=last_24h,last_7d,per_user,per_model,refused`),
    api("GET", `${PATHS.admin}/upstreams`),
    usageCharts("gateway", ["total", "model", "user"]),
    api("GET", `${PATHS.admin}/cache`),
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
    ...cacheStats(cache),
    ...usageStats("Last 24 hours", stats.last_24h),
    ...usageStats("Last 7 days", stats.last_7d),
    el("h2", {}, "Usage over time"),
    charts,
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

// Several upstreams: each one's state in a table (one's is in the Overview's first line).
export function upstreamTable(pool) {
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
export function upstreamStates(upstreams) {
  const one = (u) => (u.status === "up" ? `${u.name} up` : `${u.name} out${u.reason ? `: ${u.reason}` : ""}`);
  return upstreams.map(one).join(", ") || "none";
}

// The loaded models; with several upstreams, each one's by its name.
export function loadedModels(upstreams) {
  const names = (u) => (u.loaded.length ? u.loaded.join(", ") : "none");
  if (upstreams.length === 1) return names(upstreams[0]);
  return upstreams.map((u) => `${u.name}: ${names(u)}`).join("; ") || "none";
}
