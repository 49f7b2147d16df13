// Zoom for the flame graph: a click on a box makes it full width; a click on "all" (or the
// button) resets. The page is complete without it. It ends by marking the body as rendered,
// which the tests that load the page in Chromium wait for.
(function () {
  var svg = document.getElementById('flame');
  if (svg) {
    var W = +svg.getAttribute('data-w');
    var boxes = Array.prototype.slice.call(svg.querySelectorAll('g.f'));
    var card = document.getElementById('flamecard');
    var fit = function (name, w) {
      var c = Math.floor((w - 6) / 7.3);
      if (!(c >= 3)) return '';
      return name.length <= c ? name : name.slice(0, c - 2) + '..';
    };
    var zoom = function (target) {
      var x0 = +target.getAttribute('data-x'), w0 = +target.getAttribute('data-w'), d0 = +target.getAttribute('data-d');
      boxes.forEach(function (g) {
        var x = +g.getAttribute('data-x'), w = +g.getAttribute('data-w'), d = +g.getAttribute('data-d');
        var eps = 1e-3, nx, nw;
        if (d < d0 && x <= x0 + eps && x + w >= x0 + w0 - eps) { nx = 0; nw = W; }
        else if (d >= d0 && x >= x0 - eps && x + w <= x0 + w0 + eps) { nx = (x - x0) / w0 * W; nw = w / w0 * W; }
        else { g.style.display = 'none'; return; }
        g.style.display = '';
        var r = g.querySelector('rect'), t = g.querySelector('text');
        r.setAttribute('x', nx.toFixed(2));
        r.setAttribute('width', Math.max(nw - 0.5, 0.05).toFixed(2));
        t.setAttribute('x', (nx + 3).toFixed(2));
        t.textContent = fit(g.getAttribute('data-n') || '', nw);
      });
      if (card) card.classList.toggle('zoomed', d0 > 0);
    };
    boxes.forEach(function (g) { g.addEventListener('click', function () { zoom(g); }); });
    var reset = document.getElementById('flamereset');
    if (reset && boxes.length) reset.addEventListener('click', function () { zoom(boxes[0]); });
  }
  document.body.setAttribute('data-rendered', 'ok');
})();
