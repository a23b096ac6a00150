// My keys (a user-role key, with SELF_SERVICE_KEYS on): make keys of one's own user,
// never more than this key may do, see them, and revoke them.
import { PATHS, api, el, named, openBelow, refresh, stacked, state, table } from "./core.js";
import { budgetText, changeForm, showSecret, utcText } from "./forms.js";
import { LIMITS, keySpecs } from "./keys.js";

// Left empty, a field is this key's own (its budget: what remains of this key's).
const OWN = "Empty: this key's own";

export async function myKeys(view) {
  const doc = await api("GET", `${PATHS.admin}/me/keys`);
  const secretBox = el("div", { id: "new-key", "aria-live": "polite" });
  const fresh = keySpecs({}, true);
  const specs = fresh.specs
    .filter((s) => s.key !== "role") // (always a user key)
    .map((s) => (s.group || s.key === "models" || s.key === "expires_at" || LIMITS.some(([n]) => n === s.key) ? { ...s, hint: hintFor(s) } : s));
  const form = changeForm(
    "create-own-key",
    "Make a key",
    [{ key: "name", label: "Key name", input: el("input", { autocomplete: "off" }), parse: (t) => t, required: true, api: ["key name", "name"] }, ...specs],
    fresh.groups,
    (body) => api("POST", `${PATHS.admin}/me/keys`, body),
    {
      saveLabel: "Create",
      cancel: false,
      more: "Limits, models, expiry and budget",
      done: (made) => {
        showSecret(secretBox, made);
        doc.keys.push(made);
        doc.active += 1;
        showList();
        form.reset();
      },
    },
  );
  const listing = el("div", {});
  const count = el("p", { class: "muted", id: "own-key-count" });
  const showList = () => {
    count.textContent = `${doc.active} of ${doc.allowed} active keys made by this key.`;
    listing.replaceChildren(
      table(
        [
          { title: "Key", cell: (k) => stacked(k.key_name, `${k.prefix}…`, `id ${k.id}`) },
          { title: "Status", cell: (k) => k.status },
          { title: "Models", cell: (k) => (k.models ? k.models.join(", ") : "all") },
          { title: "Limits", wrap: true, cell: limitsText },
          { title: `Budget (${PATHS.currency})`, wrap: true, cell: (k) => budgetText(k.budget, "") },
          { title: "Expires (UTC)", cell: (k) => el("span", { class: "keep" }, utcText(k.expires) || "never") },
          { title: "Actions", act: true, cell: (k) => (k.status === "active" ? revokeButton(k) : "") },
        ],
        doc.keys,
        "No keys made by this key yet.",
      ),
    );
  };
  view.append(
    el("h1", {}, "My keys"),
    el(
      "p",
      {},
      "Keys of ",
      named(state.me.key.user),
      ` made by this key: at most ${doc.allowed} active at once. Each is a user key that expires no later than this key, may use no model this key may not, and has limits and a budget no higher than this key's. Revoking this key revokes them too.`,
    ),
    count,
    form,
    secretBox,
    listing,
  );
  showList();
}

function hintFor(spec) {
  if (spec.group) return spec.key.endsWith("amount") ? "Empty: what remains of this key's budget, if it has one" : spec.hint;
  return OWN;
}

function limitsText(k) {
  const set = LIMITS.filter(([name]) => k[name] !== null).map(([name, label]) => `${label}: ${k[name] || "no limit"}`);
  return set.length ? set.join(", ") : "the gateway's defaults";
}

function revokeButton(key) {
  const revoke = el("button", { type: "button", class: "danger", "data-action": "revoke", "aria-label": `Revoke ${key.key_name}` }, "Revoke");
  revoke.addEventListener("click", async () => {
    if (!window.confirm(`Revoke ${key.key_name}? It stops working at once.`)) return;
    try {
      await api("DELETE", `${PATHS.admin}/me/keys/${key.id}`);
      refresh();
    } catch (err) {
      openBelow(revoke.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
    }
  });
  return el("div", { class: "actions" }, revoke);
}
