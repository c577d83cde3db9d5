// Sort the summary table by a clicked column (progressive: without scripts it stays in run order).
(function () {
  var table = document.getElementById("summary-table");
  var heads = table.tHead.rows[0].cells;
  for (var i = 0; i < heads.length; i++) {
    (function (col) {
      heads[col].style.cursor = "pointer";
      heads[col].addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var num = heads[col].getAttribute("data-type") === "num";
        var dir = heads[col].getAttribute("data-dir") === "asc" ? -1 : 1;
        heads[col].setAttribute("data-dir", dir === 1 ? "asc" : "desc");
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
          if (num) { return dir * (parseFloat(x) - parseFloat(y)); }
          return dir * x.localeCompare(y);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    })(i);
  }
})();
