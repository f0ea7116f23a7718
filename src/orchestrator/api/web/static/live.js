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

  function sessionEnded() {
    var status = document.getElementById("live-status");
    if (!status) { return; }
    status.textContent = "Live updates stopped: your session ended (orch serve restarted, " +
      "or you logged out or the token was revoked). ";
    var link = document.createElement("a");
    link.href = "/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    link.textContent = "Log in again";
    status.appendChild(link);
    status.setAttribute("data-session", "ended");
  }

  // Follow an SSE stream of GET /events. The browser reconnects by itself after a
  // network error (with Last-Event-ID); a refused stream (401: the session is gone, 429:
  // too many streams) closes it for good, so ask the page itself what happened: a
  // redirect to the login form means the session ended, anything else is retried.
  function follow(url, onMessage, liveText) {
    var lastId = null;
    var retryMs = 5000;
    function open(target) {
      var source = new EventSource(target);
      source.onopen = function () { setStatus(liveText); };
      source.onmessage = function (message) {
        if (message.lastEventId) { lastId = message.lastEventId; }
        onMessage(message);
      };
      source.onerror = function () {
        if (source.readyState !== EventSource.CLOSED) {
          setStatus("Live updates interrupted; reconnecting…");
          return;
        }
        fetch(window.location.pathname + window.location.search,
              {credentials: "same-origin", redirect: "manual"})
          .then(function (response) {
            if (response.type === "opaqueredirect" || response.status === 401) {
              sessionEnded();
              return;
            }
            setStatus("Live updates refused; trying again…");
            setTimeout(function () { open(resumeUrl()); }, retryMs);
          })
          .catch(function () { setTimeout(function () { open(resumeUrl()); }, retryMs); });
      };
    }
    function resumeUrl() {
      var next = new URL(url, window.location.href);
      if (lastId) { next.searchParams.set("after", lastId); }
      return next.pathname + next.search;
    }
    open(url);
  }

  setInterval(tickElapsed, 1000);
  return { durationText: durationText, setStatus: setStatus, follow: follow };
})();
