// syncd status page: live updates by short polling, and filters applied without a reload.
// Everything shown is HTML the server rendered and escaped; this script only swaps it in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var region = document.getElementById("live-region");
  if (!live || !region) return;
  var version = live.getAttribute("data-version");
  var url = live.getAttribute("data-url") || location.pathname + location.search;
  var busy = false;
  var failures = 0;

  function fragmentUrl(u) {
    return u + (u.indexOf("?") >= 0 ? "&" : "?") + "fragment=1";
  }

  function refresh() {
    busy = true;
    return fetch(fragmentUrl(url), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        version = r.headers.get("X-Syncd-Version") || version;
        return r.text();
      })
      .then(function (html) {
        region.innerHTML = html;
        live.setAttribute("data-version", version);
      })
      .finally(function () { busy = false; });
  }

  function poll() {
    if (busy) return;
    fetch("/api/version", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        failures = 0;
        live.classList.remove("stale");
        live.textContent = "live";
        if (data.version !== version) return refresh();
      })
      .catch(function () {
        failures += 1;
        if (failures > 2) {
          live.classList.add("stale");
          live.textContent = "not updating: the daemon does not answer";
        }
      });
  }

  var form = document.getElementById("filters");
  if (form) {
    var apply = function () {
      var params = new URLSearchParams(new FormData(form));
      Array.from(params.keys()).forEach(function (k) { if (!params.get(k)) params.delete(k); });
      var query = params.toString();
      url = location.pathname + (query ? "?" + query : "");
      history.replaceState(null, "", url);
      refresh();
    };
    form.addEventListener("change", apply);
    form.addEventListener("input", function (e) { if (e.target.name === "name") apply(); });
    form.addEventListener("submit", function (e) { e.preventDefault(); apply(); });
  }
  setInterval(poll, 400);
})();
