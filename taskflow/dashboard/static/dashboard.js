// Refreshes the panels every few seconds, without reloading the page or moving the focus: the
// server renders them.
(function () {
  "use strict";
  var panels = document.getElementById("panels");
  var stamp = document.getElementById("refreshed");
  if (!panels) return;
  var every = Number(panels.dataset.every || 5) * 1000;
  // Replacing the panels would drop a selection or the focus in them: wait until there is none.
  function inUse() {
    var selection = window.getSelection();
    var active = document.activeElement;
    return (selection !== null && !selection.isCollapsed && panels.contains(selection.anchorNode))
      || (active !== null && active !== document.body && panels.contains(active));
  }
  function refresh() {
    if (inUse()) {
      setTimeout(refresh, every);
      return;
    }
    fetch(panels.dataset.src, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (!answer.ok) throw new Error("HTTP " + answer.status);
        return answer.text();
      })
      .then(function (html) {
        panels.innerHTML = html;
        var generated = panels.querySelector("[data-generated]");
        if (stamp && generated) stamp.textContent = "as of " + generated.dataset.generated;
      })
      .catch(function (error) {
        if (stamp) stamp.textContent = "not refreshed: " + error.message;
      })
      .finally(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
