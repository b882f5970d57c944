// The predictions browser's filters: by category and by right/wrong (per run, as the page explains).
(function () {
  "use strict";
  var data = document.getElementById("medvl-data");
  if (data) {
    window.medvlData = JSON.parse(data.textContent);
  }
  var table = document.getElementById("predictions-table");
  if (!table) {
    return;
  }
  var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr.prediction"));
  var category = document.getElementById("filter-category");
  var answers = document.getElementById("filter-status");
  var count = document.getElementById("visible-count");

  function matches(row) {
    var wrong = Number(row.dataset.wrong);
    var right = Number(row.dataset.right);
    if (category.value && row.dataset.category !== category.value) {
      return false;
    }
    switch (answers.value) {
      case "wrong": return wrong > 0;
      case "right": return right > 0 && right === Number(row.dataset.answers);
      case "disagree": return wrong > 0 && right > 0;
      default: return true;
    }
  }

  function update() {
    var shown = 0;
    rows.forEach(function (row) {
      var visible = matches(row);
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    });
    count.textContent = "showing " + shown + " of " + rows.length + " rows";
  }

  category.addEventListener("change", update);
  answers.addEventListener("change", update);
  update();
})();
