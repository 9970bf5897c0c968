/*
 * The live leaderboard page: board picker, top 10 kept live from `top` events (rows animate with FLIP when
 * they move), connection state, login and a "you" panel fed by user:{id} events, and a test-score button.
 * Rows carry data-user-id / data-rank / data-score; the state badge is #conn-state[data-state].
 */
(function () {
  "use strict";

  var S = window.Scoreboard;
  var TOP = 10;
  var POLL_MS = 5000;  // HTTP refresh of the top while the live connection is down
  var base = new URL(".", window.location.href).href.replace(/\/+$/, "");
  var client = new S.Client(base);
  var ui = {};
  ["board", "board-meta", "conn-state", "top", "top-empty", "login-panel", "login-form", "username", "password",
   "register", "login-error", "you", "you-name", "you-score", "you-rank", "submit-form", "points", "submit-score",
   "submit-result", "logout"].forEach(function (id) { ui[id] = document.getElementById(id); });

  var page = { board: null, boards: [], userChannel: null, liveRenders: 0, countdown: null, poll: null };
  var live = client.live({ onState: showState, onError: function (err) { console.warn("live:", err.message); } });

  // ---- live events ------------------------------------------------------------------------------

  live.on("*", "top", function (channel, type, data) {
    if (channel !== boardChannel()) return;
    page.liveRenders += 1;
    renderTop(entriesOf(data), data);
  });
  live.on("*", "snapshot", function (channel, type, snapshot) {
    if (channel === boardChannel()) {
      page.liveRenders += 1;
      renderTop(entriesOf(snapshot), snapshot);
    } else if (channel === page.userChannel) {
      applyYou(standingOf(snapshot));
    }
  });
  live.on("*", "score", function (channel, type, data) { if (channel === page.userChannel) applyYou(standingOf(data)); });
  live.on("*", "rank", function (channel, type, data) { if (channel === page.userChannel) applyYou(standingOf(data)); });

  function boardChannel() { return page.board ? "leaderboard:" + page.board : null; }

  function entriesOf(data) {
    if (!data) return [];
    if (Array.isArray(data)) return data;
    if (Array.isArray(data.entries)) return data.entries;
    if (Array.isArray(data.top)) return data.top;
    return [];
  }

  function standingOf(data) {
    if (!data || typeof data !== "object") return null;
    if (data.board && data.board !== page.board) return null;
    if (data.boards) return data.boards[page.board] || null;
    return data;
  }

  // ---- connection state -------------------------------------------------------------------------

  function showState(state, info) {
    var el = ui["conn-state"];
    el.dataset.state = state;
    clearInterval(page.countdown);
    page.countdown = null;
    if (state === "reconnecting" && info && info.delay > 0) {
      var tick = function () {
        var left = Math.max(0, Math.ceil((info.at - Date.now()) / 1000));
        el.textContent = "reconnecting in " + left + "s";
      };
      tick();
      page.countdown = setInterval(tick, 250);
    } else {
      el.textContent = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…",
                         closed: live.error ? "offline: " + live.error.code : "offline", idle: "idle" }[state] || state;
    }
    if (state === "live") {
      clearInterval(page.poll);
      page.poll = null;
    } else if (!page.poll) {
      page.poll = setInterval(refreshTop, POLL_MS);
    }
  }

  // ---- boards -----------------------------------------------------------------------------------

  async function loadBoards() {
    for (;;) {
      try {
        var listing = await client.leaderboards();
        page.boards = listing.boards || [];
        break;
      } catch (err) {
        await new Promise(function (resolve) { setTimeout(resolve, 3000); });
      }
    }
    ui.board.textContent = "";
    page.boards.forEach(function (board) {
      var option = document.createElement("option");
      option.value = board.name;
      option.textContent = board.name;
      ui.board.appendChild(option);
    });
    var wanted = new URLSearchParams(window.location.search).get("board");
    var names = page.boards.map(function (b) { return b.name; });
    selectBoard(names.indexOf(wanted) >= 0 ? wanted : (names.indexOf("global") >= 0 ? "global" : names[0]));
  }

  function selectBoard(name) {
    if (!name || name === page.board) return;
    if (page.board) live.unsubscribe(boardChannel());
    page.board = name;
    ui.board.value = name;
    ui.top.dataset.board = name;
    ui.top.textContent = "";
    showMeta(null);
    var url = new URL(window.location.href);
    url.searchParams.set("board", name);
    window.history.replaceState(null, "", url);
    live.subscribe(boardChannel()).catch(function (err) { console.warn("subscribe", err.message); });
    refreshTop();
    refreshYou();
  }

  function showMeta(data) {
    var board = page.boards.filter(function (b) { return b.name === page.board; })[0];
    if (!board) { ui["board-meta"].textContent = ""; return; }
    var total = data && typeof data.total === "number" ? data.total : board.total;
    var period = (data && data.period) || board.period;
    ui["board-meta"].textContent = board.operator + " · " + (board.order === "asc" ? "lower is better" : "higher is better") +
      " · period " + period + (typeof total === "number" ? " · " + total.toLocaleString() + " players" : "");
  }

  async function refreshTop() {
    if (!page.board) return;
    var board = page.board, before = page.liveRenders;
    try {
      var data = await client.leaderboard(board, { limit: TOP });
      // A live render since the request left is newer than this answer.
      if (board === page.board && before === page.liveRenders) renderTop(data.entries || [], data);
    } catch (err) {
      console.warn("leaderboard", err.message);
    }
  }

  // ---- the top 10 with FLIP animation ------------------------------------------------------------

  function renderTop(entries, data) {
    var list = ui.top;
    var before = new Map(), rows = new Map();
    Array.prototype.forEach.call(list.children, function (row) {
      before.set(row.dataset.userId, { top: row.getBoundingClientRect().top, rank: Number(row.dataset.rank),
                                       score: row.dataset.score });
      rows.set(row.dataset.userId, row);
    });
    var ordered = entries.slice(0, TOP).map(function (entry) {
      var id = String(entry.user_id);
      var row = rows.get(id) || makeRow(id);
      rows.delete(id);
      fillRow(row, entry);
      return row;
    });
    rows.forEach(function (row) { row.remove(); });
    ordered.forEach(function (row) { list.appendChild(row); });  // moves existing rows into the new order
    ui["top-empty"].hidden = ordered.length > 0;
    showMeta(data);
    var moving = [];
    ordered.forEach(function (row) {
      var prev = before.get(row.dataset.userId);
      if (!prev) { flash(row, "entered"); return; }
      var dy = prev.top - row.getBoundingClientRect().top;  // First - Last
      if (dy) {
        row.style.transition = "none";
        row.style.transform = "translateY(" + dy + "px)";   // Invert
        moving.push(row);
      }
      var rank = Number(row.dataset.rank);
      var delta = row.querySelector(".delta");
      if (rank < prev.rank) {
        delta.textContent = "▲" + (prev.rank - rank);
        flash(row, "moved-up");
      } else if (rank > prev.rank) {
        delta.textContent = "▼" + (rank - prev.rank);
        flash(row, "moved-down");
      }
      if (row.dataset.score !== prev.score) flash(row, "scored", true);
    });
    if (moving.length) {
      list.getBoundingClientRect();  // commit the inverted positions before playing
      requestAnimationFrame(function () {
        moving.forEach(function (row) {                      // Play
          row.style.transition = "transform 450ms cubic-bezier(.2, .8, .2, 1)";
          row.style.transform = "";
        });
      });
    }
  }

  function makeRow(id) {
    var row = document.createElement("li");
    row.className = "row";
    row.dataset.userId = id;
    ["rank", "name", "delta", "score"].forEach(function (part) {
      var span = document.createElement("span");
      span.className = part;
      row.appendChild(span);
    });
    return row;
  }

  function fillRow(row, entry) {
    row.dataset.rank = String(entry.rank);
    row.dataset.score = String(entry.score);
    row.dataset.username = entry.username || "";
    row.querySelector(".rank").textContent = entry.rank;
    row.querySelector(".name").textContent = entry.username || "#" + entry.user_id;
    row.querySelector(".score").textContent = Number(entry.score).toLocaleString();
    row.classList.toggle("me", !!client.user && String(client.user.user_id) === row.dataset.userId);
  }

  var FLASHES = ["moved-up", "moved-down", "entered"];

  function flash(row, cls, additive) {
    if (!additive) FLASHES.forEach(function (name) { row.classList.remove(name); });
    row.classList.remove(cls);
    void row.offsetWidth;  // restart the CSS animation
    row.classList.add(cls);
  }

  ui.top.addEventListener("animationend", function (event) {
    var row = event.target.closest(".row");
    if (row && event.target === row) FLASHES.forEach(function (name) { row.classList.remove(name); });
    if (row && event.animationName === "bump") row.classList.remove("scored");
  });

  // ---- login and the "you" panel ----------------------------------------------------------------

  async function enter(register) {
    var username = ui.username.value.trim(), password = ui.password.value;
    ui["login-error"].textContent = "";
    setBusy(true);
    try {
      if (register) await client.register(username, password);
      await client.login(username, password);
    } catch (err) {
      ui["login-error"].textContent = describe(err);
      return;
    } finally {
      setBusy(false);
    }
    ui.password.value = "";
    ui["login-panel"].hidden = true;
    ui.you.hidden = false;
    ui["you-name"].textContent = client.user.username;
    live.reconnect();  // the next connection authenticates with the token
    page.userChannel = "user:" + client.user.user_id;
    live.subscribe(page.userChannel).catch(function (err) { console.warn("subscribe", err.message); });
    Array.prototype.forEach.call(ui.top.children, function (row) {
      row.classList.toggle("me", String(client.user.user_id) === row.dataset.userId);
    });
    refreshYou();
  }

  async function leave() {
    if (page.userChannel) live.unsubscribe(page.userChannel);
    page.userChannel = null;
    try { await client.logout(); } catch (err) { /* the session is forgotten either way */ }
    ui.you.hidden = true;
    ui["login-panel"].hidden = false;
    applyYou({ score: null, rank: null });
    ui["submit-result"].textContent = "";
    Array.prototype.forEach.call(ui.top.children, function (row) { row.classList.remove("me"); });
    live.reconnect();  // anonymous again
  }

  async function refreshYou() {
    if (!client.loggedIn) return;
    try {
      var me = await client.me();
      applyYou((me.boards && me.boards[page.board]) || { score: null, rank: null });
    } catch (err) {
      if (err.status === 401) leave();
    }
  }

  function applyYou(standing) {
    if (!standing) return;
    if ("score" in standing) setValue(ui["you-score"], "score", standing.score);
    if ("rank" in standing) setValue(ui["you-rank"], "rank", standing.rank);
  }

  function setValue(el, key, value) {
    var text = value === null || value === undefined ? "" : String(value);
    if (el.dataset[key] === text) return;
    el.dataset[key] = text;
    el.textContent = text === "" ? "–" : (key === "rank" ? "#" + text : Number(text).toLocaleString());
    el.classList.remove("changed");
    void el.offsetWidth;
    el.classList.add("changed");
  }

  async function submitScore(event) {
    event.preventDefault();
    var points = parseInt(ui.points.value, 10);
    var result = ui["submit-result"];
    if (!Number.isFinite(points)) { result.textContent = "enter a whole number of points"; return; }
    ui["submit-score"].disabled = true;
    try {
      var answer = await client.submit(points, { board: page.board,
                                                 durationMs: 20000 + Math.floor(Math.random() * 40000) });
      result.className = "result ok";
      result.textContent = "accepted: score " + answer.score.toLocaleString() + ", rank #" + answer.rank +
        (answer.previous_rank && answer.previous_rank !== answer.rank ? " (was #" + answer.previous_rank + ")" : "");
      applyYou({ score: answer.score, rank: answer.rank });
    } catch (err) {
      result.className = "result bad";
      result.textContent = describe(err);
    } finally {
      ui["submit-score"].disabled = false;
    }
  }

  function describe(err) {
    if (!(err instanceof S.ScoreboardError)) return String(err && err.message || err);
    var text = err.code + (err.reason ? " (" + err.reason + ")" : "") + ": " + err.detail;
    if (err.retryAfter) text += " — retry in " + err.retryAfter + " s";
    return text;
  }

  function setBusy(busy) {
    ui["login-form"].querySelectorAll("button").forEach(function (b) { b.disabled = busy; });
  }

  // ---- wiring -----------------------------------------------------------------------------------

  ui["login-form"].addEventListener("submit", function (event) { event.preventDefault(); enter(false); });
  ui.register.addEventListener("click", function () {
    if (ui["login-form"].reportValidity()) enter(true);
  });
  ui.logout.addEventListener("click", leave);
  ui["submit-form"].addEventListener("submit", submitScore);
  ui.board.addEventListener("change", function () { selectBoard(ui.board.value); });

  window.scoreboardPage = { client: client, live: live, state: page };  // for the console and tests
  live.connect();
  loadBoards();
})();
