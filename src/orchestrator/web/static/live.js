// Shared by the dashboard's pages: elapsed-time counters and a status line.
// Plain JavaScript, no build step; loaded with the page (Content-Security-Policy:
// scripts from this origin only, none inline).
"use strict";

window.orch = (function () {
  function durationText(seconds) {
    var whole = Math.max(Math.floor(seconds), 0);
    var days = Math.floor(whole / 86400);
    var hours = Math.floor((whole % 86400) / 3600);
    var minutes = Math.floor((whole % 3600) / 60);
    var secs = whole % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (days) { return days + "d " + hours + "h"; }
    if (hours) { return hours + "h " + pad(minutes) + "m"; }
    if (minutes) { return minutes + "m " + pad(secs) + "s"; }
    return secs + "s";
  }

  function tickElapsed() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time.elapsed[data-since]").forEach(function (el) {
      var since = parseFloat(el.getAttribute("data-since"));
      if (!isNaN(since)) { el.textContent = durationText(now - since); }
    });
  }

  function setStatus(text) {
    var status = document.getElementById("live-status");
    if (status) { status.textContent = text; }
  }

  setInterval(tickElapsed, 1000);
  return { durationText: durationText, setStatus: setStatus };
})();
