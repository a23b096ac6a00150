// aigateway dashboard. No framework and nothing built: ES modules, one a page, whose views
// are built with DOM calls (core.js). This one is the shell: sign-in, navigation, theme.
import { PATHS, api, el, markCut, onRefresh, root, state } from "./core.js";
import { keysView } from "./keys.js";
import { myUsage } from "./me.js";
import { myKeys } from "./mykeys.js";
import { modelsView } from "./models.js";
import { nowView } from "./now.js";
import { overview } from "./overview.js";
import { playground } from "./playground.js";
import { usageView } from "./usage.js";
import { usersView } from "./users.js";

const VIEWS = {
  overview: { title: "Overview", admin: true, render: overview },
  now: { title: "Now", admin: true, render: nowView },
  keys: { title: "Keys", admin: true, render: keysView },
  users: { title: "Users", admin: true, render: usersView },
  models: { title: "Models", admin: false, render: modelsView },
  usage: { title: "Usage", admin: false, render: usageView },
  me: { title: "My usage", admin: false, render: myUsage },
  // (shown only to a key that may make keys: SELF_SERVICE_KEYS on, a user key an admin made)
  mykeys: { title: "My keys", admin: false, render: myKeys, shown: (me) => me.self_service_keys !== null },
  playground: { title: "Playground", admin: false, render: playground },
};

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
      .filter(([, v]) => (isAdmin || !v.admin) && (!v.shown || v.shown(state.me)))
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

// The focus to the page's heading (or, signed out, the sign-in form's place): the next Tab
// goes on from there.
function focusPage() {
  const heading = document.querySelector("#view h1") || document.getElementById("main");
  heading.tabIndex = -1;
  heading.focus();
}

const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

// The theme shown: the one chosen, else the system's.
function isDark() {
  return root.dataset.theme ? root.dataset.theme === "dark" : systemDark.matches;
}

// The theme button is a toggle, "Dark theme", pressed while the page is dark: a screen
// reader says which theme is on (its label stays, as a toggle's should).
function applyTheme(theme) {
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
  const button = document.getElementById("theme");
  button.setAttribute("aria-pressed", String(isDark()));
  button.title = `Dark theme: ${isDark() ? "on" : "off"}`;
}

document.addEventListener("DOMContentLoaded", () => {
  // Only the theme is remembered in the browser; never a key.
  applyTheme(localStorage.getItem("aigateway-theme"));
  // (none chosen: the system's theme changing changes the page's, and the button's state)
  systemDark.addEventListener("change", () => applyTheme(root.dataset.theme));
  document.getElementById("theme").addEventListener("click", () => {
    const next = isDark() ? "light" : "dark";
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
    if (event.key !== "Escape" || !document.getElementById("nav").classList.contains("open")) return;
    showMenu(false);
    // (the link that had the focus is hidden now: the focus goes back where it opened)
    document.getElementById("menu").focus();
  });
  // Which values are cut changes with the page's width (a window resized, a scroll bar
  // come) and with what is shown: measured again when the view's size changes.
  // (A ResizeObserver's callback runs after layout, when the widths are known.)
  const view = document.getElementById("view");
  new ResizeObserver(() => markCut(view)).observe(view);
  window.addEventListener("hashchange", async () => {
    await route();
    // A page chosen from the nav: the focus goes to its heading, so a keyboard and a
    // screen reader start there (the link that had it is hidden now in the phone's menu).
    if (document.querySelector("#view h1")) focusPage();
  });
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault(); // (#main is no page of the router's)
    focusPage();
  });
  onRefresh(route);
  start();
});

