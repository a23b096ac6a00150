// Starts Swagger UI on /openapi.json (the page allows no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: document.documentElement.dataset.spec,
    dom_id: "#swagger",
    deepLinking: true,
  });
});
