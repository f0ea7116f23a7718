// The task page follows GET /events?task=...: on each event it fetches the page again
// and swaps the sections marked data-live (summary, actions, timeline, runs, artifacts,
// diff). The running job's log streams from GET /tasks/{id}/logs?follow=1, appended as
// text (never parsed as HTML).
"use strict";

(function () {
  var root = document.getElementById("task-live");
  if (!root || !window.EventSource) { return; }
  var logSource = null;

  function followLog(section) {
    if (logSource) { logSource.close(); logSource = null; }
    var url = section.getAttribute("data-log-url");
    var output = section.querySelector("#log-output");
    var state = section.querySelector("#log-state");
    if (!url || !output) { return; }
    logSource = new EventSource(url);
    var opened = false;
    logSource.onopen = function () {
      // A reconnect sends the log from its start again.
      if (opened) { output.textContent = ""; }
      opened = true;
      if (state) { state.textContent = "Streaming…"; }
    };
    logSource.onmessage = function (message) {
      output.textContent += message.data + "\n";
      output.scrollTop = output.scrollHeight;
    };
    logSource.addEventListener("end", function (message) {
      var code = null;
      try { code = JSON.parse(message.data).exit_code; } catch (e) { code = null; }
      if (state) { state.textContent = "The run ended (exit code " + (code === null ? "unknown" : code) + ")."; }
      logSource.close();
      logSource = null;
    });
    logSource.onerror = function () {
      if (state && logSource) { state.textContent = "Log stream interrupted; reconnecting…"; }
    };
  }

  var refreshing = false;
  var again = false;

  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.pathname + window.location.search, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("page: " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (section) {
          var replacement = fresh.getElementById(section.id);
          if (replacement) { section.replaceWith(document.importNode(replacement, true)); }
        });
        var oldLog = document.getElementById("live-log");
        var newLog = fresh.getElementById("live-log");
        var newRun = newLog ? newLog.getAttribute("data-run-id") : "";
        // A new run replaces the log; an ended one stays on screen until then.
        if (oldLog && newRun && newRun !== oldLog.getAttribute("data-run-id")) {
          var imported = document.importNode(newLog, true);
          oldLog.replaceWith(imported);
          followLog(imported);
        }
      })
      .catch(function (error) { console.warn(error); })
      .finally(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  window.orch.follow(root.getAttribute("data-events-url"), function () { refresh(); },
                    "Live: this page follows the task.");
  var log = document.getElementById("live-log");
  if (log) { followLog(log); }
  root.setAttribute("data-live-connected", "yes");
})();
