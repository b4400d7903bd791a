// Live countdowns for meshca's status page. Every element with a
// data-deadline (RFC 3339) shows the time left until it, updated each
// second; once past, it shows its data-past text ("expired" by default)
// and gets the "past" class. Without this script the page still shows the
// absolute times the server rendered.
(function () {
  "use strict";

  function left(ms) {
    var s = Math.floor(ms / 1000);
    var d = Math.floor(s / 86400);
    var h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60);
    s = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    return m + "m " + s + "s";
  }

  var els = document.querySelectorAll("[data-deadline]");

  function tick() {
    var now = Date.now();
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var at = Date.parse(el.getAttribute("data-deadline"));
      if (isNaN(at)) continue;
      if (!el.title) el.title = el.textContent; // keep the absolute time on hover
      if (at <= now) {
        el.textContent = el.getAttribute("data-past") || "expired";
        el.classList.add("past");
      } else {
        el.textContent = left(at - now);
        el.classList.remove("past");
      }
    }
  }

  tick();
  setInterval(tick, 1000);
})();
