// Now (admins): the requests in flight on every gateway sharing the database, each
// upstream's queue and loaded models (the gateway's last check, never an upstream call),
// refreshed every couple of seconds while the page is shown; Stop ends a request.
import { PATHS, api, el, markCut, number, stacked, table } from "./core.js";

export async function nowView(view) {
  const status = el("p", { class: "muted", role: "status", id: "now-status" });
  const body = el("div", { id: "now-body" });
  view.append(el("h1", {}, "Now"), status, body);
  let doc = await api("GET", `${PATHS.admin}/now`);
  let note = ""; // what the last Stop said, kept across refreshes
  const show = () => {
    const gateways = doc.gateways.length;
    const when = new Date().toISOString().slice(11, 19);
    status.textContent = `${note ? `${note} ` : ""}${number(doc.requests.length)} in flight on ${gateways} gateway${gateways === 1 ? "" : "s"}; updated ${when} UTC, every ${doc.refresh_s} s.`;
    body.replaceChildren(...requestsTable(doc, stop), ...upstreamsTable(doc.upstreams));
    markCut(body); // (at once, not a frame later: the page is measured between refreshes)
  };
  const stop = async (row, button) => {
    button.disabled = true;
    button.textContent = "Stopping…";
    try {
      await api("POST", `${PATHS.admin}/now/${encodeURIComponent(row.id)}/stop`);
      note = `Stopped ${row.user}'s request to ${row.model ?? row.route}.`;
    } catch (err) {
      note = `Could not stop ${row.user}'s request: ${err.message}.`;
      button.disabled = false;
      button.textContent = "Stop";
    }
    status.textContent = note;
  };
  show();
  // Refreshed while this page is shown and the tab visible; stopped when the page goes.
  const timer = setInterval(async () => {
    if (!view.isConnected) return clearInterval(timer);
    if (document.hidden) return;
    try {
      doc = await api("GET", `${PATHS.admin}/now`);
      if (view.isConnected) show();
    } catch (err) {
      status.textContent = `Could not refresh: ${err.message}`;
    }
  }, Math.max(1, doc.refresh_s) * 1000);
}

function requestsTable(doc, stop) {
  const several = doc.gateways.length > 1;
  const columns = [
    { title: "User / key", cell: (r) => stacked(r.user, r.key) },
    { title: "Model", cell: (r) => r.model ?? r.route },
    { title: "Upstream", cell: (r) => r.upstream ?? "-" },
    { title: "State", keep: true, cell: (r) => STATES[r.state] ?? r.state },
    { title: "Elapsed", num: true, cell: (r) => seconds(r.elapsed_s) },
    { title: "Tokens", num: true, cell: (r) => number(r.tokens) },
  ];
  if (several) columns.push({ title: "Gateway", cell: (r) => (r.gateway === doc.gateway ? "this one" : r.gateway) });
  columns.push({
    title: "Actions",
    act: true,
    cell: (r) => {
      const label = `Stop ${r.user}'s request to ${r.model ?? r.route}`;
      const button = el("button", { type: "button", class: "danger", "aria-label": label }, "Stop");
      if (r.stopped_by) {
        button.disabled = true;
        button.textContent = "Stopping…";
      }
      button.addEventListener("click", () => stop(r, button));
      return button;
    },
  });
  return [el("h2", {}, "Requests in flight"), table(columns, doc.requests, "No request in flight.")];
}

function upstreamsTable(upstreams) {
  return [
    el("h2", {}, "Upstreams"),
    table(
      [
        { title: "Name", cell: (u) => u.name },
        { title: "State", cell: (u) => (u.status === "up" ? "up" : `out: ${u.reason ?? ""}`) },
        { title: "In flight", num: true, cell: (u) => number(u.in_flight) },
        { title: "Waiting", num: true, cell: (u) => number(u.queued) },
        { title: "Loaded models", cell: (u) => loaded(u.loaded_models ?? []) },
      ],
      upstreams,
      "No upstreams.",
    ),
  ];
}

const STATES = {
  reading: "reading its body",
  queued: "waiting in the queue",
  waiting: "waiting for the model",
  answering: "answering",
  stopping: "stopping",
};

// Each loaded model on a line: its name, its memory on the GPU and when it unloads (UTC).
function loaded(models) {
  if (!models.length) return "none";
  const line = (m) => [m.name, m.size_vram === null ? null : gib(m.size_vram), until(m.expires_at)].filter(Boolean).join(" · ");
  return stacked(...models.map(line));
}

function gib(bytes) {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function until(when) {
  const at = when ? new Date(when) : null;
  if (!at || Number.isNaN(at.getTime())) return null;
  return `until ${at.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.floor(s - m * 60)} s`;
}
