// Starts ReDoc on /openapi.json (the page allows no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.Redoc.init(document.documentElement.dataset.spec, {}, document.getElementById("redoc"));
});
