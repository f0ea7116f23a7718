// The board follows GET /events: each task event fetches that task's card again
// (server-rendered, with the page's filters) and puts it in its stage's column.
"use strict";

(function () {
  var board = document.getElementById("board");
  if (!board || !window.EventSource) { return; }
  var cardUrl = board.getAttribute("data-card-url");
  var query = board.getAttribute("data-card-query");
  var pending = {};  // task id -> true while a fetch is under way
  var again = {};    // task id -> true when another event came meanwhile

  function updateCounts() {
    board.querySelectorAll(".column").forEach(function (column) {
      var count = column.querySelectorAll(".card").length;
      var badge = column.querySelector(".count");
      if (badge) {
        badge.textContent = String(count);
        badge.setAttribute("aria-label", count + " tasks");
      }
    });
  }

  function place(taskId, html) {
    var old = document.getElementById("task-" + taskId);
    if (old) { old.remove(); }
    if (html) {
      var template = document.createElement("template");
      template.innerHTML = html.trim();
      var card = template.content.firstElementChild;
      var column = board.querySelector('.column[data-stage="' + card.getAttribute("data-stage") + '"] .cards');
      if (column) { column.insertBefore(card, column.firstChild); }
    }
    updateCounts();
  }

  // A page of older tasks keeps its own: a new task belongs on the newest page.
  var older = board.hasAttribute("data-older");

  function refresh(taskId) {
    if (older && !document.getElementById("task-" + taskId)) { return; }
    if (pending[taskId]) { again[taskId] = true; return; }
    pending[taskId] = true;
    fetch(cardUrl + encodeURIComponent(taskId) + "?" + query, {credentials: "same-origin"})
      .then(function (response) {
        if (response.status === 204 || response.status === 404) { return ""; }
        if (!response.ok) { throw new Error("card " + taskId + ": " + response.status); }
        return response.text();
      })
      .then(function (html) { place(taskId, html); })
      .catch(function (error) { console.warn(error); })
      .finally(function () {
        pending[taskId] = false;
        if (again[taskId]) { again[taskId] = false; refresh(taskId); }
      });
  }

  window.orch.follow(board.getAttribute("data-events-url"), function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (event && event.task_id) { refresh(String(event.task_id)); }
  }, "Live: the board updates as tasks move.");
  board.setAttribute("data-live", "connected");
})();
